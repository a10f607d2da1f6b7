"""Which server process holds which user's sockets, across processes.

With Redis: a hash per user (socket id -> "<process id> <device id>"), trusted only while that process's
heartbeat key lives, so a killed process's sockets stop counting within ``PROCESS_TTL_S``. Without Redis there
is one process, and only what it holds counts (the caller checks its own sockets first).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from typing import Any

from redis.asyncio import Redis

from server.core.background import cancel_and_wait

log = logging.getLogger(__name__)
ONLINE_KEY = "healthmate:online:"
PROCESS_KEY = "healthmate:process:"
PROCESS_TTL_S = 15


class Presence:
    def __init__(self, redis: Redis | None = None) -> None:
        self.redis = redis
        self.process_id = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._heartbeat: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.redis is not None:
            self._heartbeat = asyncio.create_task(self._beat(), name="process-heartbeat")

    async def stop(self) -> None:
        if self._heartbeat is None:
            return
        await cancel_and_wait(self._heartbeat)
        with contextlib.suppress(Exception):
            await self.redis.delete(PROCESS_KEY + self.process_id)  # type: ignore[union-attr]

    async def _beat(self) -> None:
        assert self.redis is not None
        while True:
            try:
                await self.redis.set(PROCESS_KEY + self.process_id, 1, ex=PROCESS_TTL_S)
            except Exception as exc:
                log.warning("process heartbeat failed: %s", exc)
            await asyncio.sleep(PROCESS_TTL_S / 3)

    async def mark(self, user_id: Any, sid: str, online: bool, device_id: str = "") -> None:
        if self.redis is None:
            return
        try:
            if online:
                await self.redis.hset(ONLINE_KEY + str(user_id), sid, f"{self.process_id} {device_id}")
            else:
                await self.redis.hdel(ONLINE_KEY + str(user_id), sid)
        except Exception as exc:
            log.warning("online marker for %s not updated: %s", user_id, exc)

    async def online_elsewhere(self, user_id: Any) -> bool:
        """Whether a live process other than this one may hold a socket of the user. Redis down: yes,
        so that nothing is pushed twice for nothing."""
        if self.redis is None:
            return False
        try:
            owners = {_owner(v) for v in (await self.redis.hgetall(ONLINE_KEY + str(user_id))).values()}
            return any([await self.alive(p) for p in owners])
        except Exception as exc:
            log.warning("online check failed: %s", exc)
            return True

    async def devices_elsewhere(self, user_id: Any) -> set[str] | None:
        """The device ids of the user's sockets held by live processes (this one's included); None if Redis
        cannot be asked now."""
        if self.redis is None:
            return set()
        try:
            held = await self.redis.hgetall(ONLINE_KEY + str(user_id))
            entries = [v.decode().partition(" ") for v in held.values()]
            owners = {owner: await self.alive(owner) for owner in {e[0] for e in entries}}
            return {device for owner, _, device in entries if device and owners[owner]}
        except Exception as exc:
            log.warning("online check failed: %s", exc)
            return None

    async def socket_alive(self, user_id: Any, sid: str) -> bool:
        """Whether socket ``sid`` of the user is held by a live process (this one's are checked by the caller)."""
        if self.redis is None:
            return False
        owner = await self.redis.hget(ONLINE_KEY + str(user_id), sid)
        return owner is not None and await self.alive(_owner(owner))

    async def alive(self, process_id: str) -> bool:
        if process_id == self.process_id:
            return True
        return self.redis is not None and bool(await self.redis.exists(PROCESS_KEY + process_id))


def _owner(value: bytes) -> str:
    """The process id of a presence entry (``"<process id> <device id>"``)."""
    return value.decode().partition(" ")[0]
