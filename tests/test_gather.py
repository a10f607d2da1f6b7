"""``Gathered``: calls that arrive together share one piece of work, each awaiting its result."""

from __future__ import annotations

import asyncio

from server.core.gather import Gathered


async def test_calls_within_the_window_share_one_run_and_later_ones_get_their_own() -> None:
    runs: list[set[int]] = []

    async def work(keys: set[int]) -> set[int]:
        runs.append(set(keys))
        await asyncio.sleep(0.01)
        return keys

    gathered: Gathered[int, set[int]] = Gathered(work, window_s=0.05)

    async def later(key: int) -> set[int]:
        await asyncio.sleep(0.02)  # still within the window
        return await gathered([key])

    results = await asyncio.gather(gathered([1, 2]), gathered([3]), later(4))
    assert runs == [{1, 2, 3, 4}] and all(r == {1, 2, 3, 4} for r in results)
    assert await gathered([5]) == {5} and runs[-1] == {5}  # after the run: a run of its own


async def test_a_failing_run_fails_every_caller_and_the_next_call_runs_again() -> None:
    calls = 0

    async def work(keys: set[str]) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("store down")
        return len(keys)

    gathered: Gathered[str, int] = Gathered(work)
    results = await asyncio.gather(gathered(["a"]), gathered(["b"]), return_exceptions=True)
    assert [type(r) for r in results] == [RuntimeError, RuntimeError]
    assert await gathered(["c"]) == 1 and calls == 2
