"""The one helper for work nobody awaits (server/core/background.py): a task is held while it runs and let
go when done; stop lets running tasks finish within its drain time and cancels the others."""

from __future__ import annotations

import asyncio

from server.core.background import Background


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
