"""Attempt counters for throttling (registrations, logins, password changes, link-code guesses) and
token buckets for event and connect rates.

Attempts are counted per key in fixed windows, atomically and where every process sees them: in Redis
(``INCR``) when configured, else in the store (``find_one_and_update`` with ``$inc``). Counting is the
check, never a read followed by a write, so parallel attempts each get their own number and cannot all
see a count under the limit.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime

from pymongo import ASCENDING, IndexModel, ReturnDocument
from pymongo.errors import DuplicateKeyError
from redis.asyncio import Redis

from server.core.documents import StoredDocument
from server.core.errors import ApiError

REDIS_PREFIX = "hm:fail:"
_MAKE_ATTEMPTS = 5  # a window made this many times, and reset each time in between, counts this attempt as its first
# Give one attempt back: never below zero, and not at all once the window's key is gone.
_GIVE_BACK = ("local n = tonumber(redis.call('GET', KEYS[1]) or '0') "
              "if n > 0 then return redis.call('DECR', KEYS[1]) end return 0")


class ThrottleWindow(StoredDocument):
    """One key's attempts in one window (``id``: ``<key>@<window number>``) when there is no Redis;
    the store deletes it once the window is over (TTL index)."""

    id: str  # type: ignore[assignment]
    n: int = 0
    expires_at: datetime

    class Settings:
        name = "throttle_windows"
        indexes = [IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=0, name="expiry")]


Taken = list[tuple[str, float]]  # the windows an attempt was counted in (name, end): to give it back


class FailureCounter:
    """Attempts per key in fixed windows of ``window_s`` seconds (see the module's docstring)."""

    def __init__(self, window_s: int, redis: Redis | None = None) -> None:
        self.window_s = window_s
        self.redis = redis
        self._give_back = redis.register_script(_GIVE_BACK) if redis is not None else None

    def _window(self, key: str) -> tuple[str, float]:
        """The current window of ``key``: its name and when it ends (epoch seconds)."""
        number = int(time.time() // self.window_s)
        return f"{key}@{number}", (number + 1) * self.window_s

    async def _add(self, name: str, end: float, delta: int) -> int:
        """Add ``delta`` (1, or -1 to give an attempt back) atomically; the count after it."""
        if self.redis is not None:
            key = REDIS_PREFIX + name
            if delta < 0:
                return int(await self._give_back(keys=[key]))  # type: ignore[misc]
            async with self.redis.pipeline(transaction=True) as pipe:
                count, _ = await pipe.incr(key, delta).expireat(key, math.ceil(end) + 1).execute()
            return int(count)
        coll = ThrottleWindow.get_pymongo_collection()
        query = {"_id": name, **({"n": {"$gt": 0}} if delta < 0 else {})}
        for _ in range(_MAKE_ATTEMPTS):
            doc = await coll.find_one_and_update(query, {"$inc": {"n": delta}}, return_document=ReturnDocument.AFTER)
            if doc is not None or delta < 0:
                return int(doc["n"]) if doc is not None else 0
            # First attempt of the window: make the document, then count. (An upsert that also counts
            # loses the count it returns when parallel first attempts race on SecantusDB.) A `reset` may
            # delete it in between (a right password for the same account): then make it again.
            with suppress(DuplicateKeyError):
                await coll.update_one({"_id": name}, {"$setOnInsert": {
                    "n": 0, "expires_at": datetime.fromtimestamp(end, UTC)}}, upsert=True)
        return 1  # reset as often as it was made: the count starts over, this attempt its first

    async def take(self, limits: Sequence[tuple[str, int]], message: str, code: str = "too_many_attempts") -> Taken:
        """Count one attempt against each ``(key, limit)`` in turn. Over a limit: the attempt is refused
        (``code``, 429, ``retry_after_s`` and Retry-After: the end of that window) and stays counted against
        that limit only. Returns what was counted, for `give_back`."""
        taken: Taken = []
        for key, limit in limits:
            name, end = self._window(key)
            if await self._add(name, end, 1) > limit:
                await self.give_back(taken)
                retry = max(math.ceil(end - time.time()), 1)
                raise ApiError(code, message, 429, {"retry_after_s": retry},
                               headers={"Retry-After": str(retry)})
            taken.append((name, end))
        return taken

    async def give_back(self, taken: Taken) -> None:
        """Uncount an attempt that turned out right (a valid code, the right password)."""
        for name, end in taken:
            await self._add(name, end, -1)

    async def reset(self, key: str) -> None:
        name, _ = self._window(key)
        if self.redis is not None:
            await self.redis.delete(REDIS_PREFIX + name)
        else:
            await ThrottleWindow.get_pymongo_collection().delete_one({"_id": name})


class HeavyReads:
    """Expensive reads (a FHIR export of tens of thousands of readings, a month of per-minute analyses) per
    user: one at a time in this process, and at most ``per_minute`` begun a minute over all processes
    (``counter``'s window is a minute). Past either: ``too_many_requests`` (429, Retry-After) at once."""

    def __init__(self, counter: FailureCounter, per_minute: int) -> None:
        self.counter = counter
        self.per_minute = per_minute
        self._running: set[str] = set()

    @asynccontextmanager
    async def run(self, user: object) -> AsyncIterator[None]:
        key = str(user)
        if key in self._running:
            raise ApiError("too_many_requests", "Such a request of yours is still running; wait for it", 429,
                           {"retry_after_s": 1}, headers={"Retry-After": "1"})
        self._running.add(key)  # before any await: two arriving together cannot both pass
        try:
            await self.counter.take([(f"heavy:{key}", self.per_minute)], "Too many such requests; try again later",
                                    "too_many_requests")
            yield
        finally:
            self._running.discard(key)


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
