"""Urgent work before bulk work, within one process.

Urgent work (a crisis reading and the alert it raises) runs inside ``async with URGENCY.urgent()``. Bulk work
(reminders pushed to hundreds of devices at 08:00, box commands, reminder notifications and their store batches)
calls ``await URGENCY.give_way()`` between its items: while urgent work is in progress it waits for it (up to a
second, and then runs at least as long before waiting again), and otherwise, once it has held the event loop for
``SLICE_S``, it lets whatever is ready run. A loop of 400 emits never awaits anything that blocks (a socket write
returns at once), so without this it holds the event loop for its whole length (measured under the ``rush`` bench:
370 ms at 400 patients), and every step of an alert raised meanwhile waits for it. The garbage collector holds back
too while urgent work is in progress (up to ``GC_HOLD_S``). ``here()`` says whether the calling task is itself part
of urgent work (the writes of a crisis reading's request go at once, whatever they are:
``server.infra.group_commit``).

``HEALTHMATE_URGENT_FIRST=off`` (``enabled = False``) turns all of it off: bulk work neither waits nor yields, the
collector runs whenever it is due, and urgent writes queue like any other (for the ``rush`` bench's in-run
comparison)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Callable
from contextvars import Context, ContextVar

SLICE_S = 0.005  # the longest bulk work runs before letting what is ready (an alert's next step) have a turn
CLEAR_WAITS = 500  # x 2 ms: bulk work waits at most a second for urgent work
GC_HOLD_S = 1.0  # the longest the garbage collector is held back for urgent work
_WITHIN: ContextVar[bool] = ContextVar("urgent_work", default=False)  # (tasks started within inherit it)


class Urgency:
    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.enabled = True
        self.in_progress = 0  # urgent work in progress
        self._turn = clock()  # when bulk work last gave the event loop a turn
        self._free_until = self._turn  # bulk work that has just waited runs until then before waiting again
        self._gc_held_until: float | None = None  # while the collector is held back: until when at most
        self._gc_release: asyncio.TimerHandle | None = None  # (its timer)

    @contextlib.asynccontextmanager
    async def urgent(self) -> AsyncIterator[None]:
        """Urgent work in progress: bulk work holds back meanwhile."""
        if not self.enabled:
            yield
            return
        self._gc_overdue()
        self.in_progress += 1
        if self.in_progress == 1:
            self._hold_gc()
        within = _WITHIN.set(True)
        try:
            yield
        finally:
            _WITHIN.reset(within)
            self.in_progress -= 1
            if not self.in_progress:
                self._release_gc()

    def _hold_gc(self) -> None:
        """The garbage collector waits while urgent work is in progress, at most ``GC_HOLD_S``: with thousands of
        sockets' coroutines and futures alive, one of its young collections took 60-100 ms in the ``rush``
        bench's burst, and an alert caught in one waited that long. What was due runs once the work is done."""
        if gc.isenabled():  # (not when something else turned it off: that stays as it is)
            gc.disable()
            self._gc_held_until = time.monotonic() + GC_HOLD_S
            self._gc_release = asyncio.get_running_loop().call_later(GC_HOLD_S, self._release_gc)

    def _release_gc(self) -> None:
        if self._gc_held_until is not None:
            if self._gc_release is not None:
                self._gc_release.cancel()
            self._gc_release = self._gc_held_until = None
            gc.enable()

    def _gc_overdue(self) -> None:
        """The hold ends at ``GC_HOLD_S`` even if the loop whose timer would end it no longer runs: urgent work
        abandoned there, never finished, would otherwise keep the collector off for good, and with it the only
        thing that would finish that work (collecting it)."""
        if self._gc_held_until is not None and time.monotonic() >= self._gc_held_until:
            self._release_gc()

    def here(self) -> bool:
        """Whether the calling task is part of urgent work (inside ``urgent()``, or started from there)."""
        return self.enabled and _WITHIN.get()

    def owns(self, context: Context) -> bool:
        """Whether ``context`` (a callback's, a task's) is urgent work's."""
        return self.enabled and context.get(_WITHIN, False)

    async def until_clear(self) -> None:
        """Wait (up to a second) while urgent work is in progress (not when the caller is part of it)."""
        self._gc_overdue()
        for _ in range(CLEAR_WAITS):
            if not self.in_progress or not self.enabled or self.here():
                return
            await asyncio.sleep(0.002)

    async def give_way(self) -> None:
        """Between two items of bulk work: wait for urgent work in progress, else yield every ``SLICE_S``.
        Bulk work is never starved: after waiting it runs at least as long before it waits again (a flood of
        crisis readings, one after another, at most halves the pace of reminders)."""
        if not self.enabled or self.here():  # (urgent work calling a bulk helper does not wait for itself)
            return
        self._gc_overdue()
        now = self.clock()
        if self.in_progress and now >= self._free_until:
            await self.until_clear()
            self._free_until = self.clock() + max(self.clock() - now, SLICE_S)
        elif now - self._turn >= SLICE_S:
            await asyncio.sleep(0)
        else:
            return
        self._turn = self.clock()


URGENCY = Urgency()
