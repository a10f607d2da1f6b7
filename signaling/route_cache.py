"""Where a call's signals go (its state, the two sockets, who offered, the media), cached per process
so relaying an ICE candidate does not cost a store read.

Every change to a call bumps its revision and is announced to every process (``forget``); a route
is kept only if it is at least as new as the newest revision announced, so a read that raced with a
change cannot be cached over it. Entries also expire after ``ttl_s``: if an announcement is lost
(Redis down), a stale route lives that long at most, as long as a route read from the store an
instant before a change would be used anyway. The table is bounded (least recently used first out).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any


class RouteCache:
    def __init__(self, ttl_s: float = 5.0, max_calls: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_calls = max_calls
        # call id -> (route or None, newest revision known, expiry)
        self._entries: OrderedDict[str, tuple[dict[str, Any] | None, int, float]] = OrderedDict()

    def get(self, call_id: str, now: float | None = None) -> dict[str, Any] | None:
        entry = self._entries.get(call_id)
        if entry is None or entry[0] is None or entry[2] <= (time.monotonic() if now is None else now):
            return None
        self._entries.move_to_end(call_id)
        return entry[0]

    def put(self, call_id: str, route: dict[str, Any], now: float | None = None) -> None:
        """Keep ``route`` (read from the store, with its ``rev``) unless a newer revision was announced."""
        known = self._entries.get(call_id)
        if known is not None and known[1] > route["rev"]:
            return
        self._set(call_id, (route, route["rev"], (time.monotonic() if now is None else now) + self.ttl_s))

    def forget(self, call_id: str, rev: int) -> None:
        """The call changed to revision ``rev``: drop its route, and refuse older ones from now on."""
        known = self._entries.get(call_id)
        self._set(call_id, (None, max(rev, known[1] if known else rev), time.monotonic() + self.ttl_s))

    def _set(self, call_id: str, entry: tuple[dict[str, Any] | None, int, float]) -> None:
        self._entries[call_id] = entry
        self._entries.move_to_end(call_id)
        while len(self._entries) > self.max_calls:
            self._entries.popitem(last=False)
