"""The medicine box over real sockets, driven by the simulator's box: drawers reported, the right
drawer commanded at dose time (acknowledged, resent while unacknowledged), opening it confirms the
dose, closing is recorded, the wrong drawer is flagged to the patient, never opening ends missed."""

from __future__ import annotations

import argparse
import asyncio
import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import socketio
from beanie import PydanticObjectId

from devices.documents import BoxEvent, Device, MedicineBoxState
from devices.medicine_box import BoxBehaviour
from devices.simulators import sensor as simulate
from devices.simulators.box import BoxRun, run_box
from server.core.config import Settings
from server.core.documents import utcnow
from server.infra.embedded_store import EmbeddedStore
from server.meds.documents import DoseEvent
from tests.conftest import make_settings
from tests.helpers import PASSWORD, Api, User, connect
from tests.test_medications import create
from tests.test_scheduler import add_dose, notes_of

GRACE_S = 4


@pytest.fixture
async def settings(store: EmbeddedStore, tmp_path: Path) -> Settings:
    return make_settings(store.url, tmp_path, dose_grace_s=GRACE_S)


async def pair_box(api: Api, patient: User, kind: str = "medicine_box") -> str:
    status, body = await api.request("POST", f"/api/patients/{patient.id}/devices", patient,
                                     json={"kind": kind, "serial": f"BOX-{kind}", "model": "HM Box 7"})
    assert status == 201, body
    return body["credential"]


@asynccontextmanager
async def running_box(api: Api, credential: str, **behaviour: Any) -> AsyncIterator[BoxRun]:
    run = BoxRun(api.base_url, credential, BoxBehaviour(**behaviour))
    stop = asyncio.Event()
    task = asyncio.create_task(run_box(run, stop))
    await asyncio.wait_for(run.connected.wait(), 10)
    try:
        yield run
    finally:
        stop.set()
        await task


async def until(check: Any, timeout: float = 10) -> None:
    """Wait for ``check()`` (plain or awaitable) to be true."""
    for _ in range(int(timeout / 0.05)):
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


async def setup_patient(api: Api) -> tuple[User, User, Any, Any, dict[str, Any]]:
    patient = await api.register("patient")
    carer = await api.register("caregiver")
    await api.link(patient, carer)
    p_sock, c_sock = await api.socket(patient), await api.socket(carer)
    med = await create(p_sock, patient.id, schedule={"as_needed": True}, drawer=2, stock=20)
    return patient, carer, p_sock, c_sock, med


async def test_on_time_opening_the_commanded_drawer_confirms_the_dose(api: Api) -> None:
    patient, _, p_sock, c_sock, med = await setup_patient(api)
    credential = await pair_box(api, patient)
    async with running_box(api, credential, scenario="on_time", drawers=7) as box:
        assert box.hello is not None and [d["index"] for d in box.hello["drawers"]] == list(range(1, 8))
        assert box.hello["assigned"] == [{"drawer": 2, "medication_id": med["id"], "name": "Metformin"}]
        dose = await add_dose(patient, med, utcnow() + timedelta(milliseconds=300))
        (confirmed,) = await p_sock.events.wait("dose:confirmed", timeout=10)
        assert confirmed["id"] == str(dose.id) and confirmed["confirmed_via"] == "box"
        await c_sock.events.wait("dose:confirmed")
        await until(lambda: len(box.behaviour.commands) >= 2)
        remind, clear = box.behaviour.commands[:2]
        assert (remind.action, remind.drawer, remind.led, remind.buzzer, remind.dose_id) == (
            "remind", 2, "on", True, str(dose.id))
        assert (clear.action, clear.drawer, clear.led, clear.buzzer) == ("clear", 2, "off", False)
        assert box.behaviour.leds[2] is False
        await until(lambda: len(box.replies) == 2)
    opened, closed = box.replies
    assert opened[:2] == ("box:drawer-opened", 2) and opened[2]["data"]["confirmed"] == [str(dose.id)]
    assert closed[:2] == ("box:drawer-closed", 2) and closed[2]["ok"] is True
    stored = await DoseEvent.get(dose.id)
    assert stored is not None and stored.state == "confirmed" and stored.box_acked_at is not None
    assert stored.box_attempts == 1 and stored.box_next_at is None
    events = await BoxEvent.find(BoxEvent.patient_id == PydanticObjectId(patient.id)).sort(BoxEvent.id).to_list()
    assert [(e.kind, e.drawer, e.confirmed) for e in events] == [("opened", 2, [str(dose.id)]), ("closed", 2, [])]
    device = await Device.find_one(Device.patient_id == PydanticObjectId(patient.id))
    assert device is not None and device.firmware == "sim-1.0" and device.battery == 87.0
    state = await MedicineBoxState.get(device.id)
    assert state is not None and len(state.drawers) == 7
    changes = await p_sock.events.wait("med:changed", count=2)
    assert changes[-1]["medication"]["stock"] == 19  # the dose came out of stock


@pytest.mark.parametrize("scenario", ["wrong_drawer", "never"])
async def test_wrong_drawer_is_flagged_and_an_unopened_dose_ends_missed(api: Api, scenario: str) -> None:
    patient, _, p_sock, c_sock, med = await setup_patient(api)
    async with running_box(api, await pair_box(api, patient), scenario=scenario, drawers=7) as box:
        dose = await add_dose(patient, med, utcnow() + timedelta(milliseconds=300))
        await p_sock.events.wait("dose:due")
        if scenario == "wrong_drawer":
            (flag,) = await p_sock.events.wait("box:wrong-drawer", timeout=10)
            assert flag["drawer"] == 3 and flag["expected"] == [2] and flag["dose_ids"] == [str(dose.id)]
            (note,) = await notes_of(p_sock, "wrong_drawer")
            assert note["urgency"] == "high" and "drawer 2" in note["body"]
            assert (await DoseEvent.get(dose.id)).state == "reminded"  # type: ignore[union-attr]
        (missed,) = await c_sock.events.wait("dose:missed", timeout=GRACE_S + 6)
        assert missed["id"] == str(dose.id)
        await notes_of(c_sock, "dose_missed")
    assert [c.action for c in box.behaviour.commands] == ["remind"]
    opened = [r for r in box.replies if r[0] == "box:drawer-opened"]
    assert len(opened) == (1 if scenario == "wrong_drawer" else 0)
    assert p_sock.events.of("dose:confirmed") == []


async def test_late_opening_confirms_and_an_unacknowledged_command_is_resent(api: Api) -> None:
    patient, _, p_sock, _, med = await setup_patient(api)
    async with running_box(api, await pair_box(api, patient), scenario="late", late_s=2.0, drop_acks=1) as box:
        dose = await add_dose(patient, med, utcnow() + timedelta(milliseconds=300))
        (confirmed,) = await p_sock.events.wait("dose:confirmed", timeout=GRACE_S + 4)
        assert confirmed["confirmed_via"] == "box"
    reminds = [c for c in box.behaviour.commands if c.action == "remind"]
    assert [c.attempt for c in reminds] == [1, 2] and {c.dose_id for c in reminds} == {str(dose.id)}
    stored = await DoseEvent.get(dose.id)
    assert stored is not None and stored.box_attempts == 2 and stored.box_acked_at is not None
    assert stored.confirmed_at is not None and stored.reminded_at is not None
    assert (stored.confirmed_at - stored.reminded_at).total_seconds() >= 2.0  # late, still within grace
    assert [r[0] for r in box.replies].count("box:drawer-opened") == 1  # a resent command does not reopen


async def test_confirming_in_the_app_clears_the_box(api: Api) -> None:
    patient, _, p_sock, _, med = await setup_patient(api)
    async with running_box(api, await pair_box(api, patient), scenario="never") as box:
        dose = await add_dose(patient, med, utcnow() + timedelta(milliseconds=300))
        await p_sock.events.wait("dose:due")
        await until(lambda: len(box.behaviour.commands) == 1)
        await p_sock.ok("dose:confirm", {"patient_id": patient.id, "dose_id": str(dose.id)})
        await until(lambda: len(box.behaviour.commands) == 2)
    assert [c.action for c in box.behaviour.commands] == ["remind", "clear"] and box.behaviour.leds[2] is False


async def test_box_events_are_validated_and_only_for_a_box(api: Api) -> None:
    patient = await api.register("patient")
    client = await connect(api.base_url, None, auth={"device_token": await pair_box(api, patient)})
    try:
        ok = await client.call("box:hello", {"drawers": [{"index": 1}, {"index": 2}], "firmware": "1.2"}, timeout=5)
        assert ok["ok"] is True and ok["data"]["assigned"] == []
        for event, payload in (("box:hello", {"drawers": [{"index": 1}, {"index": 1}]}),
                               ("box:hello", {"drawers": [{"index": i} for i in range(1, 34)]}),
                               ("box:hello", {"drawers": [{"index": 0}]}), ("box:hello", {"drawers": []}),
                               ("box:hello", {"drawers": [{"index": 1}], "battery": 101}),
                               ("box:drawer-opened", {"drawer": 40}), ("box:drawer-opened", {"drawer": "two"}),
                               ("box:drawer-closed", {}), ("box:drawers", {"drawers": [{"index": 1, "x": 1}]})):
            reply = await client.call(event, payload, timeout=5)
            assert reply["ok"] is False and reply["error"]["code"] == "invalid_payload", (event, payload)
        reply = await client.call("box:drawer-opened", {"drawer": 5}, timeout=5)  # it reported two drawers
        assert reply["ok"] is False and reply["error"]["code"] == "invalid_drawer"
        assert (await client.call("box:drawers", {"drawers": [{"index": 5, "label": "Evening"}]}, timeout=5))["ok"]
        reply = await client.call("box:drawer-opened", {"drawer": 5}, timeout=5)
        assert reply["ok"] is True and reply["data"] == {"confirmed": [], "wrong_drawer": False, "expected": []}
    finally:
        await client.close()
    # Another kind of device, and users, may not speak for a box.
    ecg = socketio.AsyncClient(reconnection=False)
    await ecg.connect(api.base_url, auth={"device_token": await pair_box(api, patient, "ecg")},
                      transports=["websocket"])
    try:
        reply = await ecg.call("box:drawer-opened", {"drawer": 1}, timeout=5)
        assert reply["ok"] is False and reply["error"]["code"] == "forbidden"
    finally:
        await ecg.disconnect()
    reply = await (await api.socket(patient)).call("box:hello", {"drawers": [{"index": 1}]})
    assert reply["ok"] is False and reply["error"]["code"] == "forbidden"
    assert await BoxEvent.find(BoxEvent.patient_id == PydanticObjectId(patient.id)).count() == 1


async def test_simulator_command_line_runs_a_box(api: Api) -> None:
    patient, _, p_sock, _, med = await setup_patient(api)
    parser = argparse.ArgumentParser()
    simulate.add_arguments(parser)
    args = parser.parse_args(["--url", api.base_url, "--email", patient.email, "--password", PASSWORD,
                              "--kind", "medicine_box", "--scenario", "on_time", "--duration", "3"])
    task = asyncio.create_task(simulate.main(args))
    await until(lambda: MedicineBoxState.find(MedicineBoxState.patient_id == PydanticObjectId(patient.id)).exists())
    dose = await add_dose(patient, med, utcnow() + timedelta(milliseconds=200))
    (confirmed,) = await p_sock.events.wait("dose:confirmed", timeout=10)
    assert confirmed["id"] == str(dose.id) and confirmed["confirmed_via"] == "box"
    await task
