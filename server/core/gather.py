"""Calls that arrive together share one piece of work: the keys asked for while the work waits to start
(the same turn of the event loop, or ``window_s``) are handed to it together, and every caller awaits the
same result. The store's cost is per command (and, on the embedded store, per commit and disk sync): a
batch of reminders looking up their patients' push registrations, or boxes acknowledging their commands
at 08:00, each cost one instead of one per caller."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Generic, TypeVar

K = TypeVar("K")
R = TypeVar("R")


class Gathered(Generic[K, R]):
    def __init__(self, work: Callable[[set[K]], Awaitable[R]], window_s: float = 0.0) -> None:
        self.work = work
        self.window_s = window_s
        self._gathering: tuple[set[K], asyncio.Task[R]] | None = None

    async def __call__(self, keys: Iterable[K]) -> R:
        """``work`` of these keys and of those asked for with them."""
        if self._gathering is None:
            gathering: set[K] = set()
            self._gathering = (gathering, asyncio.create_task(self._run(gathering)))
        gathering, task = self._gathering
        gathering.update(keys)
        return await asyncio.shield(task)

    async def _run(self, keys: set[K]) -> R:
        await asyncio.sleep(self.window_s)  # the calls made meanwhile add their keys
        self._gathering = None
        return await self.work(keys)
