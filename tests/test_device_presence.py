"""Device presence over real sockets: heartbeats carry battery and firmware, a silent device is
marked disconnected and its patient and caregivers are told once, a heartbeat clears it; with two
server processes the change is still announced once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.app import create_app
from server.infra.embedded_store import EmbeddedStore
from tests.conftest import make_settings
from tests.device_clients import SioDevice, pair_device
from tests.helpers import Api, User, process_env, server_processes

SILENCE_S = 1.0


@pytest.fixture
async def fast(store: EmbeddedStore, tmp_path: Path, aiohttp_server) -> AsyncIterator[Api]:  # type: ignore[no-untyped-def]
    server = await aiohttp_server(create_app(make_settings(store.url, tmp_path, device_silence_s=SILENCE_S)))
    async with Api.of(server) as client:
        yield client


async def notifications(api: Api, user: User, kind: str) -> list[dict]:
    status, page = await api.request("GET", "/api/notifications?limit=200", user)
    assert status == 200, page
    return [n for n in page["items"] if n["kind"] == kind]


async def device_row(api: Api, patient: User, device_id: str) -> dict:
    status, listed = await api.request("GET", f"/api/patients/{patient.id}/devices", patient)
    assert status == 200
    return next(d for d in listed["items"] if d["id"] == device_id)


async def test_heartbeat_reports_battery_and_firmware(api: Api) -> None:
    patient = await api.register("patient")
    device_id, credential = await pair_device(api, patient)
    assert (await device_row(api, patient, device_id))["online"] is False  # never seen yet
    device = SioDevice(api.base_url, device_id, credential)
    await device.connect()
    try:
        reply = await device.call("device:heartbeat", {"battery": 87.5, "firmware": "2.4.1-rc1"})
        assert reply["ok"] is True and reply["data"]["online"] is True and reply["data"]["heartbeat_s"] == 20
        row = await device_row(api, patient, device_id)
        assert (row["online"], row["battery"], row["firmware"]) == (True, 87.5, "2.4.1-rc1")
        assert row["last_seen_at"] is not None and row["disconnected_at"] is None
        # A heartbeat without them keeps what was reported.
        assert (await device.call("device:heartbeat"))["ok"] is True
        assert (await device_row(api, patient, device_id))["battery"] == 87.5
        for bad in ({"battery": 140}, {"battery": -1}, {"firmware": "x" * 65}, {"firmware": "<script>"},
                    {"battery": 50, "colour": "red"}, {"battery": "full"}, [1, 2]):
            reply = await device.call("device:heartbeat", bad)
            assert reply["ok"] is False and reply["error"]["code"] == "invalid_payload", bad
        assert (await device_row(api, patient, device_id))["battery"] == 87.5
    finally:
        await device.close()
    user_socket = await api.socket(patient)
    reply = await user_socket.call("device:heartbeat", {"battery": 5})
    assert reply["ok"] is False and reply["error"]["code"] == "forbidden"


async def test_silent_device_disconnected_once_and_reconnect_clears_it(fast: Api) -> None:
    api = fast
    patient = await api.register("patient")
    carer = await api.register("caregiver")
    clinician = await api.register("clinician")
    stranger = await api.register("caregiver")
    await api.link(patient, carer)
    await api.link(patient, clinician)
    watchers = {u.id: await api.socket(u) for u in (patient, carer, stranger)}
    device_id, credential = await pair_device(api, patient, kind="ppg", serial="RING-7")
    device = SioDevice(api.base_url, device_id, credential)
    await device.connect()
    assert (await device.call("device:heartbeat", {"battery": 40}))["ok"] is True
    # The device stays connected but stops heartbeating: after the silence it is disconnected.
    for user in (patient, carer):
        (presence,) = await watchers[user.id].events.wait("device:presence", timeout=10)
        assert presence["device_id"] == device_id and presence["online"] is False and presence["battery"] == 40
        (note,) = await watchers[user.id].events.wait("notification:new")
        assert note["kind"] == "device_disconnected" and note["data"]["device_id"] == device_id
        assert "RING-7" in note["title"] and note["patient_id"] == patient.id
    row = await device_row(api, patient, device_id)
    assert row["online"] is False and row["disconnected_at"] is not None
    # Told once, however long it stays silent; the clinician and strangers are not told.
    await asyncio.sleep(SILENCE_S * 5)
    for user in (patient, carer):
        assert len(await notifications(api, user, "device_disconnected")) == 1
        assert len(watchers[user.id].events.of("device:presence")) == 1
    assert await notifications(api, clinician, "device_disconnected") == []
    assert watchers[stranger.id].events.items == []
    # The next heartbeat clears it and says so.
    reply = await device.call("device:heartbeat", {"battery": 39, "firmware": "1.0.3"})
    assert reply["ok"] is True and reply["data"]["online"] is True
    for user in (patient, carer):
        presences = await watchers[user.id].events.wait("device:presence", count=2)
        assert presences[1]["online"] is True and presences[1]["firmware"] == "1.0.3"
        notes = await watchers[user.id].events.wait("notification:new", count=2)
        assert notes[1]["kind"] == "device_reconnected"
    row = await device_row(api, patient, device_id)
    assert (row["online"], row["disconnected_at"], row["battery"]) == (True, None, 39)
    # Heartbeating in time keeps it online; a revoked device is never reported.
    for _ in range(4):
        await asyncio.sleep(SILENCE_S / 3)
        assert (await device.call("device:heartbeat"))["ok"] is True
    assert len(watchers[patient.id].events.of("device:presence")) == 2
    await device.close()
    status, _ = await api.request("DELETE", f"/api/patients/{patient.id}/devices/{device_id}", patient)
    assert status == 200
    await asyncio.sleep(SILENCE_S * 2.5)
    assert len(watchers[patient.id].events.of("device:presence")) == 2


async def test_reconnecting_socket_counts_as_a_sign_of_life(fast: Api) -> None:
    api = fast
    patient = await api.register("patient")
    watcher = await api.socket(patient)
    device_id, credential = await pair_device(api, patient, kind="medicine_box", serial="BOX-1")
    device = SioDevice(api.base_url, device_id, credential)
    await device.connect()
    await device.close()
    (gone,) = await watcher.events.wait("device:presence", timeout=10)
    assert gone["online"] is False
    device = SioDevice(api.base_url, device_id, credential)
    await device.connect()
    try:
        presences = await watcher.events.wait("device:presence", count=2)
        assert presences[1]["online"] is True
    finally:
        await device.close()


async def test_two_processes_announce_a_disconnection_once(store: EmbeddedStore, redis_url: str,
                                                           tmp_path: Path) -> None:
    env = process_env(store.url, tmp_path, redis_url, device_silence_s=1.0)
    async with server_processes(env, env) as (one, two):
        async with Api(one.url) as api_one, Api(two.url) as api_two:
            patient = await api_one.register("patient")
            carer = await api_one.register("caregiver")
            await api_one.link(patient, carer)
            on_two = await api_two.socket(carer)
            for round_ in range(3):
                device_id, credential = await pair_device(api_one, patient, serial=f"ECG-{round_}")
                # Seen on process one, then silent; back on process two, then silent again.
                for server, total in ((one, 3 * round_ + 1), (two, 3 * round_ + 3)):
                    device = SioDevice(server.url, device_id, credential)
                    await device.connect()
                    assert (await device.call("device:heartbeat", {"battery": 90}))["ok"] is True
                    await device.close()
                    await on_two.events.wait("device:presence", count=total, timeout=10)
            await asyncio.sleep(2)  # both processes sweep many times more
            presences = on_two.events.of("device:presence")
            assert [p["online"] for p in presences] == [False, True, False] * 3
            for user in (patient, carer):
                lost = await notifications(api_two, user, "device_disconnected")
                back = await notifications(api_two, user, "device_reconnected")
                assert (len(lost), len(back)) == (6, 3)
