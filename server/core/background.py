"""Work nobody awaits (a notification after an alert, a webhook with retries, a media teardown): each task
is held until it finishes (the event loop keeps only weak references to tasks, so an unheld one may be
collected mid-way) and ended at stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)
RECANCEL_S = 0.5  # how long a cancelled task has to end (its clean-up included) before it is cancelled again


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
        await cancel_and_wait(*self.tasks)


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None, within: float | None = None) -> None:
    """Cancel ``tasks`` and wait until they have ended (or ``within`` seconds, then leave them), cancelling again
    any that carried on: on Python 3.11 a task cancelled just as the ``asyncio.wait_for`` it awaited was finishing
    carries on as if it had not been (gh-86296), and a loop such as a scheduler's then never ends (a stop waiting
    for it never returns). How each ended is theirs (an error is logged); the caller's own cancellation is not
    swallowed."""
    loop = asyncio.get_running_loop()
    deadline = None if within is None else loop.time() + within
    pending = {t for t in tasks if t is not None and t is not asyncio.current_task()}
    ended: set[asyncio.Task[Any]] = set()
    while pending and (deadline is None or loop.time() < deadline):
        for task in pending:
            task.cancel()
        done, pending = await asyncio.wait(pending, timeout=RECANCEL_S)
        ended |= done
    for task in ended:
        if not task.cancelled() and (error := task.exception()) is not None:
            log.warning("%s ended with %r while being stopped", task.get_name(), error)
