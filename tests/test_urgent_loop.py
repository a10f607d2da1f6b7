"""The server's event loop runs urgent work's callbacks before those already waiting (``server.core.urgent_loop``):
each test queues ordinary callbacks first and finds urgent work's run ahead of them, in the order it came."""

from __future__ import annotations

import asyncio
import contextvars
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from server.cli import event_loop
from server.core.urgency import URGENCY
from server.core.urgent_loop import UrgentFirstLoop
from server.infra.embedded_store import EmbeddedStore
from server.infra.store import make_client
from tests.conftest import make_settings, store_of_tests

WAITING = 20  # ordinary callbacks queued before the urgent ones


@pytest.fixture(autouse=True)
def urgent_first() -> Iterator[None]:
    enabled, URGENCY.enabled = URGENCY.enabled, True
    yield
    URGENCY.enabled = enabled


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    loop = UrgentFirstLoop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def queue_waiting(order: list[Any]) -> None:
    loop = asyncio.get_running_loop()
    for i in range(WAITING):
        loop.call_soon(order.append, i)


def test_an_urgent_tasks_next_step_runs_before_the_callbacks_already_waiting() -> None:
    order: list[Any] = []

    async def main() -> None:
        gate = asyncio.get_running_loop().create_future()

        async def urgent() -> None:
            async with URGENCY.urgent():
                await gate  # (a store reply, say)
                order.append("urgent")

        task = asyncio.create_task(urgent())
        await asyncio.sleep(0)  # it waits at the gate
        queue_waiting(order)
        gate.set_result(None)  # its next step is due, after those
        await task

    run(main)
    assert order == ["urgent", *range(WAITING)]


def test_what_urgent_work_schedules_goes_first_in_the_order_it_came() -> None:
    """Whatever it runs: e.g. waking, for the alert's frame, the writer task of a recipient's socket (a context
    outside urgent work)."""
    order: list[Any] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        queue_waiting(order)
        writers = contextvars.copy_context()  # (taken outside urgent work)
        async with URGENCY.urgent():
            for name in ("first", "second", "third"):
                loop.call_soon(order.append, name, context=writers)
        await asyncio.sleep(0.01)

    run(main)
    assert order == ["first", "second", "third", *range(WAITING)]


def test_with_urgent_first_off_the_order_is_the_standard_loops() -> None:
    order: list[Any] = []
    URGENCY.enabled = False

    async def main() -> None:
        loop = asyncio.get_running_loop()
        queue_waiting(order)
        async with URGENCY.urgent():
            loop.call_soon(order.append, "urgent")
        await asyncio.sleep(0.01)

    run(main)
    assert order == [*range(WAITING), "urgent"]


def read_order(resumed_by_urgent_work: bool) -> list[Any]:
    """A socket's data arriving while ordinary callbacks are queued: when is it read? (PyMongo's connections stop
    reading once a reply is in and resume when a command is sent: by whoever sends it.)"""
    order: list[Any] = []

    class Reader(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            order.append(data)

    async def main() -> None:
        ours, theirs = socket.socketpair()
        transport, _ = await asyncio.get_running_loop().create_connection(Reader, sock=ours)
        transport.pause_reading()
        if resumed_by_urgent_work:
            async with URGENCY.urgent():
                transport.resume_reading()
        else:
            transport.resume_reading()
        theirs.send(b"reply")
        queue_waiting(order)
        await asyncio.sleep(0.01)
        transport.close()
        theirs.close()

    run(main)
    return order


def test_a_socket_urgent_work_reads_from_is_read_before_the_callbacks_waiting() -> None:
    assert read_order(resumed_by_urgent_work=True) == [b"reply", *range(WAITING)]
    assert read_order(resumed_by_urgent_work=False) == [*range(WAITING), b"reply"]


@pytest.fixture(scope="module")
async def store(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedStore]:
    """A store of this module's own: it holds a command with a failpoint."""
    async with store_of_tests(tmp_path_factory, "urgent-loop-store", test_commands=True) as s:
        yield s


async def test_a_store_reply_to_urgent_work_is_read_and_handled_before_the_callbacks_waiting(
        store: EmbeddedStore) -> None:
    """With PyMongo and the store: the store holds urgent work's query 0.1 s, its reply comes while the loop is busy
    (a callback sleeping 0.3 s from 0.03 s on); of what is ready then, the reply and urgent work's next step go
    first."""
    order: list[Any] = []

    async def main() -> None:
        client, admin = make_client(store.url, "held-reply"), make_client(store.url)
        await client.admin.command("ping")  # (connected)
        await admin.admin.command({"configureFailPoint": "failCommand", "mode": "alwaysOn", "data": {
            "appName": "held-reply", "blockConnection": True, "blockTimeMS": 100, "failCommands": ["find"]}})

        async def urgent() -> None:
            async with URGENCY.urgent():
                await client.probe.readings.find_one({})
                order.append("reply")

        def busy() -> None:
            time.sleep(0.3)
            queue_waiting(order)

        try:
            task = asyncio.create_task(urgent())
            asyncio.get_running_loop().call_later(0.03, busy)
            await task
            await asyncio.sleep(0.01)
        finally:
            await admin.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
            await client.close()
            await admin.close()

    await asyncio.to_thread(run, main)
    assert order == ["reply", *range(WAITING)]


def test_the_server_runs_on_it_with_urgent_first_on_and_on_uvloop_with_it_off(tmp_path: Path) -> None:
    for on, kind in ((True, UrgentFirstLoop), (False, uvloop.Loop)):
        loop = event_loop(make_settings("mongodb://127.0.0.1:1", tmp_path, urgent_first=on))
        try:
            assert type(loop) is kind
        finally:
            loop.close()
