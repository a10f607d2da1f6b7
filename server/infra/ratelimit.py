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


class TokenBuckets:
    """Rate limits per key (a connection, a user, an address): ``rate`` per second sustained, bursts up
    to ``burst``. In memory, per process; idle keys are forgotten so the table stays bounded."""

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def take(self, key: str, now: float | None = None) -> float:
        """Spend one token: 0.0 if allowed, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._buckets[key] = (tokens, now)
            wait = (1.0 - tokens) / self.rate
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)  # least recently used: the longest idle, nearly full again
        return wait

    def forget(self, key: str) -> None:
        self._buckets.pop(key, None)
