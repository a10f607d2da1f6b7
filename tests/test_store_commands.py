"""Store commands per user action (PyMongo command monitoring, ``COMMANDS.by_name``), the counts
docs/operations.md lists for ``bp:add``, an alert raise, a reminder and an ECG frame. Background loops (the
dose scheduler's pass each second, the alert sweep) send commands of their own: each action is counted three
times and the smallest count kept. Readings, reminders and frames come BATCH at a time, as in a rush (the
group commit shares their inserts), and are counted per item."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from beanie import PydanticObjectId

from server.core.config import Settings
from server.core.documents import utcnow
from server.infra.embedded_store import EmbeddedStore
from server.infra.store import COMMANDS
from server.meds.documents import DoseEvent
from tests.conftest import make_settings
from tests.helpers import Api
from tests.streaming import device_socket, frame, open_stream, pair
from tests.test_medications import create
from tests.test_scheduler import notes_of

CRISIS = {"systolic": 192, "diastolic": 124, "pulse": 101}
# The most store commands each action may take (docs/operations.md lists what they are).
# reminder: a batch's lookups of push registrations share one query (one each: 1.85 per dose).
BOUNDS = {"bp:add": 1, "alert raise": 9, "reminder": 1.2, "frame": 0.2}
BATCH = 20


@pytest.fixture
async def settings(store: EmbeddedStore, tmp_path: Path) -> Settings:
    return make_settings(store.url, tmp_path, alert_sweep_s=60)  # fewer background commands in the counts


async def fewest(action: Callable[[int], Awaitable[object]],
                 after: Callable[[object], Awaitable[None]] | None = None) -> Counter[str]:
    """The store commands of ``action``, the least of three counts (``after`` each, uncounted)."""
    counts = []
    for attempt in range(3):
        before = Counter(COMMANDS.by_name)
        result = await action(attempt)
        counts.append(Counter(COMMANDS.by_name) - before)
        if after is not None:
            await after(result)
    return min(counts, key=lambda c: c.total())


def per(count: Counter[str], items: int) -> Counter[str]:
    return Counter({k: round(v / items, 2) for k, v in count.items()})  # type: ignore[misc]


async def test_store_commands_per_action(api: Api) -> None:
    patient, carer = await api.register("patient"), await api.register("caregiver")
    await api.link(patient, carer)
    p_sock, c_sock = await api.socket(patient), await api.socket(carer)
    counts: dict[str, Counter[str]] = {}

    async def bp_add(_: int) -> None:
        await asyncio.gather(*(p_sock.ok("bp:add", {"systolic": 121, "diastolic": 79, "pulse": 66,
                                                    "measured_at": utcnow().isoformat()}) for _ in range(BATCH)))

    async def alert(n: int) -> str:
        await p_sock.ok("bp:add", {**CRISIS, "measured_at": utcnow().isoformat()})
        return str((await c_sock.events.wait("alert:new", n + 1))[-1]["id"])

    async def ack(alert_id: object) -> None:  # so that the next crisis raises a new alert
        await c_sock.ok("alert:ack", {"alert_id": alert_id})

    med = await create(p_sock, patient.id, schedule={"times": ["03:00"]})

    async def reminder(n: int) -> None:
        due = utcnow() + timedelta(milliseconds=300)
        await DoseEvent.insert_many([DoseEvent(  # type: ignore[call-arg]
            patient_id=PydanticObjectId(patient.id), medication_id=PydanticObjectId(med["id"]), slot=f"count-{n}-{k}",
            timezone="UTC", due_at=due, medication_name=med["name"], dose=med["dose"], drawer=med["drawer"])
            for k in range(BATCH)])
        await notes_of(p_sock, "reminder", (n + 1) * BATCH)

    counts["bp:add"] = per(await fewest(bp_add), BATCH)
    counts["alert raise"] = await fewest(alert, ack)
    counts["reminder"] = per(await fewest(reminder) - Counter({"insert": 1}), BATCH)  # less the test's insert
    dev = await device_socket(api, (await pair(api, patient))["credential"])
    stream_id = await open_stream(dev)
    samples = np.zeros(250)
    sent = iter(range(10_000))

    async def frames(_: int) -> None:
        for _ in range(BATCH):
            await dev.ok("stream:frame", frame(stream_id, next(sent), samples, 250.0))

    counts["frame"] = per(await fewest(frames), BATCH)
    for action, count in counts.items():
        print(f"{action}: {count.total():g} store commands {dict(count)}")
    for action, bound in BOUNDS.items():
        assert counts[action].total() <= bound, (action, counts[action])
