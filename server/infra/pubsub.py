"""Messages between server processes, as python-socketio's client managers do it: one interface, an
in-process implementation for a single process and a Redis one for several.

``PubSub`` carries raw messages on named channels (the live fan-out, forwarded media requests);
``ControlBus`` carries the decisions that change which local sockets may hear what (link changes,
revoked sessions), as JSON on one channel. Each process applies a message to what it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from server.core.background import cancel_and_wait

log = logging.getLogger(__name__)
CHANNEL = "healthmate:control"
Handler = Callable[[dict[str, Any]], Awaitable[None]]
Receiver = Callable[[str, bytes], Awaitable[None]]  # (channel, message)


class PubSub:
    """In-process: a message published reaches this process's subscribers, and only them."""

    def __init__(self) -> None:
        self._receivers: dict[str, Receiver] = {}

    @property
    def shared(self) -> bool:
        """Whether other processes hear what is published here."""
        return False

    async def subscribe(self, channel: str, receiver: Receiver) -> None:
        self._receivers[channel] = receiver

    async def unsubscribe(self, channel: str) -> None:
        self._receivers.pop(channel, None)

    async def publish(self, channel: str, message: bytes) -> int:
        """Send ``message``; returns how many subscribers (processes) received it."""
        receiver = self._receivers.get(channel)
        if receiver is None:
            return 0
        await _deliver(receiver, channel, message)
        return 1

    async def request(self, channel: str, payload: dict[str, Any], wait_s: float) -> dict[str, Any] | None:
        """Send ``payload`` to whoever follows ``channel`` and wait for its answer (``reply()``) on a
        one-off channel: the answer, ``None`` when nobody follows ``channel``; TimeoutError past ``wait_s``."""
        reply_channel = f"healthmate:reply:{secrets.token_hex(8)}"
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        async def on_reply(_channel: str, message: bytes) -> None:
            if not answer.done():
                answer.set_result(json.loads(message))

        await self.subscribe(reply_channel, on_reply)
        try:
            if not await self.publish(channel, json.dumps({**payload, "reply": reply_channel}).encode()):
                return None
            return await asyncio.wait_for(answer, wait_s)
        finally:
            await self.unsubscribe(reply_channel)

    async def reply(self, request: dict[str, Any], answer: dict[str, Any]) -> None:
        await self.publish(request["reply"], json.dumps(answer).encode())

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self._receivers.clear()


async def _deliver(receiver: Receiver, channel: str, message: bytes) -> None:
    try:
        await receiver(channel, message)
    except Exception:
        log.exception("message on %s failed", channel)


class RedisPubSub(PubSub):
    """Across processes through Redis: one subscriber connection per process, resubscribed to every
    channel it follows when Redis comes back (redis-py reconnects on its own)."""

    def __init__(self, redis: Redis) -> None:
        super().__init__()
        self.redis = redis
        self._pubsub: Any = None
        self._task: asyncio.Task[None] | None = None

    @property
    def shared(self) -> bool:
        return True

    async def subscribe(self, channel: str, receiver: Receiver) -> None:
        self._receivers[channel] = receiver
        if self._pubsub is not None:
            await self._pubsub.subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        if self._receivers.pop(channel, None) is not None and self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.unsubscribe(channel)

    async def publish(self, channel: str, message: bytes) -> int:
        return int(await self.redis.publish(channel, message))

    async def start(self) -> None:
        self._pubsub = self.redis.pubsub()
        # A placeholder, so listen() has something to wait on before the first real subscription.
        await self._pubsub.subscribe("healthmate:_", *self._receivers)
        self._task = asyncio.create_task(self._listen(), name="pubsub")

    async def _listen(self) -> None:
        while True:
            try:
                async for item in self._pubsub.listen():
                    if item.get("type") != "message":
                        continue
                    channel = item["channel"].decode()
                    receiver = self._receivers.get(channel)
                    if receiver is not None:
                        await _deliver(receiver, channel, item["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("pub/sub lost Redis (%s); retrying", exc)
                await asyncio.sleep(1)
                with contextlib.suppress(Exception):
                    await self._pubsub.subscribe("healthmate:_", *self._receivers)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        await super().stop()


def make_pubsub(redis: Redis | None) -> PubSub:
    return PubSub() if redis is None else RedisPubSub(redis)


class ControlBus:
    """Named operations (``{"op": ..., **data}``) to every process, this one included."""

    def __init__(self, pubsub: PubSub) -> None:
        self.pubsub = pubsub
        self._handlers: dict[str, list[Handler]] = {}

    def on(self, op: str, handler: Handler) -> None:
        self._handlers.setdefault(op, []).append(handler)

    async def publish(self, op: str, **data: Any) -> None:
        message = {"op": op, **data}
        if not self.pubsub.shared:  # one process: apply it now, as the caller expects
            await self._dispatch(message)
        else:
            await self.pubsub.publish(CHANNEL, json.dumps(message).encode())

    async def _dispatch(self, message: dict[str, Any]) -> None:
        for handler in self._handlers.get(message.get("op", ""), ()):
            try:
                await handler(message)
            except Exception:
                log.exception("control message %s failed", message.get("op"))

    async def _on_message(self, _channel: str, message: bytes) -> None:
        await self._dispatch(json.loads(message))

    async def start(self) -> None:
        await self.pubsub.subscribe(CHANNEL, self._on_message)

    async def stop(self) -> None:
        await self.pubsub.unsubscribe(CHANNEL)
