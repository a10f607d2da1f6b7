"""The one helper for work nobody awaits (server/core/background.py): a task is held while it runs and let
go when done; stop lets running tasks finish within its drain time and cancels the others, again if need be."""

from __future__ import annotations

import asyncio
import contextlib

from server.app import SERVER
from server.core.background import Background
from tests.helpers import Api


async def test_tasks_are_held_until_done_and_stop_cancels_what_is_left() -> None:
    work = Background()
    release = asyncio.Event()
    done: list[str] = []

    async def short() -> None:
        await release.wait()
        done.append("short")

    quick, forever = work.spawn(short()), work.spawn(asyncio.Event().wait())
    assert work.tasks == {quick, forever}
    release.set()
    await quick
    assert work.tasks == {forever} and done == ["short"]
    await work.stop()
    assert forever.cancelled() and not work.tasks


async def test_stop_lets_running_work_finish_within_its_drain_time() -> None:
    work = Background()
    release = asyncio.Event()
    done: list[str] = []

    async def teardown() -> None:
        await release.wait()
        done.append("closed")

    task = work.spawn(teardown())
    asyncio.get_running_loop().call_soon(release.set)
    await work.stop(drain_s=60)
    assert done == ["closed"] and not task.cancelled()


async def test_stop_ends_a_loop_whose_wait_for_swallowed_the_cancel() -> None:
    """On Python 3.11 ``asyncio.wait_for`` returns instead of raising when a cancel lands as the wait it guards
    ends (gh-86296), and a loop around it carries on: stop cancels it again until it ends."""
    work = Background()
    wake = asyncio.Event()
    passes: list[int] = []

    async def loop() -> None:
        while True:
            passes.append(1)
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), 10)

    task = work.spawn(loop())
    await asyncio.sleep(0.05)
    wake.set()  # the wait ends in the same turn as stop's cancel (awaited inline, not from a task of its own)
    async with asyncio.timeout(5) as bound:
        await work.stop()
    assert not bound.expired(), "stop did not end the loop"
    assert task.cancelled() and not work.tasks and len(passes) >= 2


async def test_a_scheduler_woken_as_it_is_stopped_stops(api: Api) -> None:
    """The real case: a pass asked for (a dose added, a box command to resend) in the turn the shutdown stops the
    scheduler; its loop ends, and the stop returns."""
    scheduler = api.app[SERVER].scheduler
    await asyncio.sleep(0.5)  # its first pass done: waiting for the next
    loops = set(scheduler._loops.tasks)
    assert loops
    scheduler.wake()
    async with asyncio.timeout(5) as bound:  # (inline: the stop's cancel lands in the turn the pass is asked for)
        await scheduler.stop()
    assert not bound.expired(), "the scheduler's stop did not end its loops"
    assert all(t.done() for t in loops)
