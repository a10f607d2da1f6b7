"""A minimal Socket.IO 5 client (Engine.IO 4, websocket transport, default namespace) for benchmarks.

python-socketio's ``AsyncClient`` costs about as much CPU per message as the server does, so on a
2-core machine a load generator made of hundreds of them would take the CPU the server is being
measured on. This one speaks the same wire protocol (open, connect with ``auth``, ping/pong,
events and acks, binary attachments) with none of the generality: one aiohttp websocket per
client, many clients multiplexed on one asyncio loop. Only what the benchmarks need.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from typing import Any

import aiohttp

Handler = Callable[[Any], None]


class SioError(Exception):
    pass


def _split_binary(data: Any, attachments: list[bytes]) -> Any:
    """Replace ``bytes`` in ``data`` with Socket.IO placeholders, collecting them in ``attachments``."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        attachments.append(bytes(data))
        return {"_placeholder": True, "num": len(attachments) - 1}
    if isinstance(data, dict):
        return {k: _split_binary(v, attachments) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_split_binary(v, attachments) for v in data]
    return data


def _join_binary(data: Any, attachments: list[bytes]) -> Any:
    if isinstance(data, dict):
        if data.get("_placeholder") is True and "num" in data:
            return attachments[data["num"]]
        return {k: _join_binary(v, attachments) for k, v in data.items()}
    if isinstance(data, list):
        return [_join_binary(v, attachments) for v in data]
    return data


class SioClient:
    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.handlers: dict[str, Handler] = {}
        self._acks: dict[int, asyncio.Future[Any]] = {}
        self._callbacks: dict[int, Handler] = {}
        self._ids = itertools.count(1)
        self._reader: asyncio.Task[None] | None = None
        self._acking: set[asyncio.Future[None]] = set()
        self._pending: tuple[str, int | None, Any, int, list[bytes]] | None = None  # binary packet being assembled

    def on(self, event: str, handler: Handler) -> None:
        """``handler(data)`` for each ``event`` received (binary attachments as ``bytes``)."""
        self.handlers[event] = handler

    async def connect(self, url: str, auth: dict[str, Any], timeout: float = 10) -> None:
        ws_url = url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
        self.ws = await self.http.ws_connect(ws_url, timeout=aiohttp.ClientWSTimeout(ws_close=timeout),
                                             autoping=False, max_msg_size=0)
        opened = await asyncio.wait_for(self.ws.receive_str(), timeout)
        if not opened.startswith("0"):
            raise SioError(f"unexpected Engine.IO open: {opened[:80]}")
        await self.ws.send_str("40" + json.dumps(auth))
        reply = await asyncio.wait_for(self.ws.receive_str(), timeout)
        # A ping may come first, and so may events to rooms the connect handler joined (the server
        # confirms the connection once its handler returns); those are before this client's time.
        while not reply.startswith(("40", "44")):
            if reply == "2":
                await self.ws.send_str("3")
            reply = await asyncio.wait_for(self.ws.receive_str(), timeout)
        if not reply.startswith("40"):
            raise SioError(f"connection refused: {reply[:200]}")
        self._reader = asyncio.create_task(self._read())

    async def _send(self, kind: str, ack_id: int | None, payload: Any) -> None:
        assert self.ws is not None
        attachments: list[bytes] = []
        body = json.dumps(_split_binary(payload, attachments), separators=(",", ":"))
        head = f"{'45' if kind == '42' else '46'}{len(attachments)}-" if attachments else kind
        await self.ws.send_str(f"{head}{'' if ack_id is None else ack_id}{body}")
        for blob in attachments:
            await self.ws.send_bytes(blob)

    async def emit(self, event: str, data: Any, callback: Handler | None = None) -> None:
        ack_id = None
        if callback is not None:
            ack_id = next(self._ids)
            self._callbacks[ack_id] = callback
        await self._send("42", ack_id, [event, data])

    async def call(self, event: str, data: Any, timeout: float = 10) -> Any:
        ack_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._acks[ack_id] = future
        try:
            await self._send("42", ack_id, [event, data])
            return await asyncio.wait_for(future, timeout)
        finally:
            self._acks.pop(ack_id, None)

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                if self._pending is not None:
                    kind, ack_id, body, count, blobs = self._pending
                    blobs.append(msg.data)
                    if len(blobs) == count:
                        self._pending = None
                        self._dispatch(kind, ack_id, _join_binary(body, blobs))
                continue
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            text: str = msg.data
            if text == "2":
                await self.ws.send_str("3")
                continue
            if not text.startswith("4") or len(text) < 2:
                continue
            kind = text[1]
            rest = text[2:]
            count = 0
            if kind in "56":
                dash = rest.index("-")
                count, rest = int(rest[:dash]), rest[dash + 1:]
            i = 0
            while i < len(rest) and rest[i].isdigit():
                i += 1
            ack_id = int(rest[:i]) if i else None
            body = json.loads(rest[i:]) if rest[i:] else None
            if kind in "56":
                self._pending = ("2" if kind == "5" else "3", ack_id, body, count, [])
            elif kind in "23":
                self._dispatch(kind, ack_id, body)
        for future in self._acks.values():
            if not future.done():
                future.set_exception(SioError("disconnected"))

    def _dispatch(self, kind: str, ack_id: int | None, body: Any) -> None:
        if kind == "3":  # an ack of ours
            args = body or [None]
            future = self._acks.get(ack_id) if ack_id is not None else None
            if future is not None and not future.done():
                future.set_result(args[0])
            elif ack_id is not None and ack_id in self._callbacks:
                self._callbacks.pop(ack_id)(args[0])
            return
        if body:
            handler = self.handlers.get(body[0])
            if handler is not None:
                handler(body[1] if len(body) > 1 else None)
                if ack_id is not None and self.ws is not None:  # the server asked for an ack: a handled event is one
                    task = asyncio.ensure_future(self.ws.send_str(f"43{ack_id}[true]"))
                    self._acking.add(task)
                    task.add_done_callback(self._acking.discard)

    async def disconnect(self) -> None:
        if self.ws is not None and not self.ws.closed:
            try:
                await self.ws.send_str("41")
            except Exception:
                pass
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
