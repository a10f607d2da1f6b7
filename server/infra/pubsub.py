"""Control messages between server processes (link changes, revoked sessions).

Socket.IO's Redis manager carries emits; this carries the decisions that change which
local sockets may hear what. Each process applies a message to the sockets it holds.
Without Redis there is one process and messages are applied directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

log = logging.getLogger(__name__)
CHANNEL = "healthmate:control"
Handler = Callable[[dict[str, Any]], Awaitable[None]]


async def listen_forever(pubsub: Any, on_message: Handler, channels: Callable[[], list[str]], what: str) -> None:
    """Hand each message of ``pubsub`` (the redis-py item) to ``on_message`` until cancelled. When Redis
    goes away, wait a second and subscribe to ``channels()`` again (redis-py reconnects on its own)."""
    while True:
        try:
            async for item in pubsub.listen():
                if item.get("type") == "message":
                    await on_message(item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s lost Redis (%s); retrying", what, exc)
            await asyncio.sleep(1)
            with contextlib.suppress(Exception):
                await pubsub.subscribe(*channels())


class ControlBus:
    def __init__(self, redis: Redis | None = None) -> None:
        self.redis = redis
        self._handlers: dict[str, list[Handler]] = {}
        self._task: asyncio.Task[None] | None = None

    def on(self, op: str, handler: Handler) -> None:
        self._handlers.setdefault(op, []).append(handler)

    async def publish(self, op: str, **data: Any) -> None:
        message = {"op": op, **data}
        if self.redis is None:
            await self._dispatch(message)
        else:
            await self.redis.publish(CHANNEL, json.dumps(message))

    async def _dispatch(self, message: dict[str, Any]) -> None:
        for handler in self._handlers.get(message.get("op", ""), ()):
            try:
                await handler(message)
            except Exception:
                log.exception("control message %s failed", message.get("op"))

    async def start(self) -> None:
        if self.redis is None:
            return
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(CHANNEL)
        self._task = asyncio.create_task(self._listen(pubsub), name="control-bus")

    async def _listen(self, pubsub: Any) -> None:
        async def on_message(item: dict[str, Any]) -> None:
            await self._dispatch(json.loads(item["data"]))

        await listen_forever(pubsub, on_message, lambda: [CHANNEL], "control bus")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
