"""Failure counters for throttling (login attempts, link-code guesses).

A fixed window per key: in Redis when configured, so every process sees the same count;
in memory otherwise, with a bounded number of keys so an attacker cycling through
addresses cannot grow memory.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from redis.asyncio import Redis


class FailureCounter:
    def __init__(self, window_s: int, redis: Redis | None = None, max_keys: int = 100_000) -> None:
        self.window_s = window_s
        self.redis = redis
        self.max_keys = max_keys
        self._mem: OrderedDict[str, tuple[int, float]] = OrderedDict()  # key -> (count, window end)

    async def count(self, key: str) -> tuple[int, int]:
        """Failures in the current window and seconds until it ends."""
        if self.redis is not None:
            pipe = self.redis.pipeline()
            pipe.get(f"hm:fail:{key}")
            pipe.ttl(f"hm:fail:{key}")
            n, ttl = await pipe.execute()
            return int(n or 0), max(int(ttl), 1)
        entry = self._mem.get(key)
        now = time.monotonic()
        if entry is None or entry[1] <= now:
            return 0, 0
        return entry[0], max(int(entry[1] - now + 0.999), 1)

    async def add(self, key: str) -> None:
        if self.redis is not None:
            pipe = self.redis.pipeline()
            pipe.incr(f"hm:fail:{key}")
            pipe.expire(f"hm:fail:{key}", self.window_s, nx=True)
            await pipe.execute()
            return
        now = time.monotonic()
        count, end = self._mem.pop(key, (0, 0.0))
        if end <= now:
            count, end = 0, now + self.window_s
        self._mem[key] = (count + 1, end)
        while len(self._mem) > self.max_keys:
            self._mem.popitem(last=False)

    async def reset(self, key: str) -> None:
        if self.redis is not None:
            await self.redis.delete(f"hm:fail:{key}")
        else:
            self._mem.pop(key, None)
