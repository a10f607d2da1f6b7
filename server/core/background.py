"""Work nobody awaits (a notification after an alert, a webhook with retries, a media teardown): each task
is held until it finishes (the event loop keeps only weak references to tasks, so an unheld one may be
collected mid-way) and ended at stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any


class Background:
    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        task = asyncio.create_task(work, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def stop(self, drain_s: float = 0.0) -> None:
        """Give the running tasks up to ``drain_s`` to finish, then cancel the others and wait for them."""
        if self.tasks and drain_s > 0:
            await asyncio.wait(self.tasks, timeout=drain_s)
        pending = list(self.tasks)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
