"""Local stand-ins for the push providers, shared by tests/test_push.py and bench/push.py: Google's OAuth token
endpoint and FCM HTTP v1, a browser push service (Web Push) and the signed webhook on an aiohttp server
(HTTP/1.1, as those services accept), and APNs on hypercorn speaking HTTP/2 without TLS (h2c with prior
knowledge; Apple speaks HTTP/2 only, and so does the APNs provider's client): each request records the HTTP
version it arrived in. Every request is recorded on arrival (``requests``) and, once answered with a 2xx,
in ``accepted``: what the provider took, the figure that counts for "none twice in the provider's eyes"."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from hypercorn.asyncio import serve
from hypercorn.config import Config
from multidict import CIMultiDict

from server.infra.embedded_store import free_port

DEAD = b'{"reason":"BadDeviceToken","error":{"status":"NOT_FOUND","details":[{"errorCode":"UNREGISTERED"}]}}'


@dataclass
class Req:
    path: str
    headers: Mapping[str, str]  # case-insensitive
    body: bytes
    http_version: str
    at: float  # time.time() on arrival (for accepted ones: on the answer)


@dataclass
class Receiver:
    base: str = ""  # OAuth, FCM, Web Push, webhook (HTTP/1.1)
    apns_base: str = ""  # APNs (HTTP/2)
    requests: list[Req] = field(default_factory=list)
    accepted: list[Req] = field(default_factory=list)
    fail: dict[str, list[int]] = field(default_factory=dict)  # path prefix -> statuses to answer first
    stall: asyncio.Event = field(default_factory=asyncio.Event)  # held requests to stalled_paths go on when set
    stalled_paths: set[str] = field(default_factory=set)
    held: set[str] = field(default_factory=set)  # path suffixes (e.g. APNs tokens) answered only when released
    released: asyncio.Event = field(default_factory=asyncio.Event)  # ... and then with 503: never accepted

    def of(self, prefix: str) -> list[Req]:
        return [r for r in self.requests if r.path.startswith(prefix)]

    def accepted_of(self, prefix: str) -> list[Req]:
        return [r for r in self.accepted if r.path.startswith(prefix)]

    async def wait(self, prefix: str, count: int = 1, timeout: float = 10.0, accepted: bool = False) -> list[Req]:
        seen = self.accepted_of if accepted else self.of
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(seen(prefix)) < count and loop.time() < deadline:
            await asyncio.sleep(0.02)
        return seen(prefix)

    async def answer(self, path: str, headers: Mapping[str, str], body: bytes, version: str) -> tuple[int, bytes]:
        req = Req(path, headers, body, version, time.time())
        self.requests.append(req)
        prefix = "/" + path.split("/")[1]
        if prefix in self.stalled_paths:
            await self.stall.wait()
        if any(path.endswith(h) for h in self.held):
            await self.released.wait()
            return 503, b'{"reason":"ServiceUnavailable"}'
        if self.fail.get(prefix):
            status = self.fail[prefix].pop(0)
            return status, DEAD if status in (400, 404, 410) else b'{"reason":"ServiceUnavailable"}'
        self.accepted.append(Req(path, headers, body, version, time.time()))
        if path == "/token":
            return 200, b'{"access_token": "ya29.test-bearer", "expires_in": 3600, "token_type": "Bearer"}'
        return (201 if prefix == "/wp" else 200), b'{"name": "projects/p/messages/1"}'

    async def _aiohttp(self, request: web.Request) -> web.Response:
        status, body = await self.answer(request.path, request.headers.copy(), await request.read(),
                                         f"{request.version.major}.{request.version.minor}")
        return web.Response(status=status, body=body, content_type="application/json")

    async def _asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        headers = CIMultiDict((k.decode(), v.decode()) for k, v in scope["headers"])
        status, out = await self.answer(scope["path"], headers, body, scope["http_version"])
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": out})


@contextlib.asynccontextmanager
async def receivers() -> AsyncIterator[Receiver]:
    """Both servers on free loopback ports, sharing one ``Receiver``."""
    rec = Receiver()
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", rec._aiohttp)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    port = free_port()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.loglevel = "WARNING"
    config.graceful_timeout = 0.5
    done = asyncio.Event()
    h2 = asyncio.create_task(serve(rec._asgi, config, shutdown_trigger=done.wait))  # type: ignore[arg-type]
    rec.apns_base = f"http://127.0.0.1:{port}"
    for _ in range(200):  # until it listens
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            break
        await asyncio.sleep(0.02)
    try:
        yield rec
    finally:
        rec.stall.set()
        rec.released.set()
        done.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(h2, 5)
        await runner.cleanup()
