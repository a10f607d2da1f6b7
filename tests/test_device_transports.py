"""One device suite, two transports: every scenario runs once with a Socket.IO device and once with
an MQTT device (through a real Mosquitto broker and the bridge), and must behave the same."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from server.app import SERVER, create_app
from server.core.documents import utcnow
from server.infra.embedded_store import EmbeddedStore
from server.meds.documents import DoseEvent
from server.transport.realtime import device_room
from tests.conftest import Broker, make_settings
from tests.device_clients import DeviceClient, MqttDevice, SioDevice, pair_device
from tests.helpers import Api
from tests.test_medications import create
from tests.test_scheduler import add_dose

SILENCE_S = 1.0


@dataclass
class Rig:
    api: Api
    transport: str
    device: Callable[[str, str], DeviceClient]

    async def paired(self, patient, kind: str = "ecg", serial: str = "DEV-1") -> DeviceClient:  # type: ignore[no-untyped-def]
        device = self.device(*await pair_device(self.api, patient, kind=kind, serial=serial))
        await device.connect()
        return device


async def mqtt_app(store: EmbeddedStore, tmp_path: Path, aiohttp_server, broker: Broker,  # type: ignore[no-untyped-def]
                   **overrides: object) -> Api:
    settings = make_settings(store.url, tmp_path, mqtt_url=broker.bridge_url, mqtt_broker_dir=broker.folder,
                             **overrides)
    server = await aiohttp_server(create_app(settings))
    bridge = server.app[SERVER].mqtt
    await asyncio.wait_for(bridge.connected.wait(), 10)
    return Api.of(server)


@pytest.fixture(params=["socketio", "mqtt"])
async def rig(request: pytest.FixtureRequest, store: EmbeddedStore, tmp_path: Path, aiohttp_server,  # type: ignore[no-untyped-def]
              mosquitto: Broker) -> AsyncIterator[Rig]:
    async with await mqtt_app(store, tmp_path, aiohttp_server, mosquitto, device_silence_s=SILENCE_S) as api:
        devices: list[DeviceClient] = []

        def make(device_id: str, credential: str) -> DeviceClient:
            device: DeviceClient = (SioDevice(api.base_url, device_id, credential) if request.param == "socketio"
                                    else MqttDevice(mosquitto.port, device_id, credential))
            devices.append(device)
            return device

        yield Rig(api, request.param, make)
        for device in devices:
            await device.close()
        assert api.app is not None
        handled = api.app[SERVER].mqtt.handled
        assert handled > 0 if request.param == "mqtt" else handled == 0  # each run really used its transport


async def test_heartbeat_presence_and_refusals(rig: Rig) -> None:
    api = rig.api
    patient = await api.register("patient")
    carer = await api.register("caregiver")
    await api.link(patient, carer)
    watcher = await api.socket(carer)
    device = await rig.paired(patient, kind="medicine_box", serial="BOX-7")
    reply = await device.call("device:heartbeat", {"battery": 55, "firmware": "3.1.0"})
    assert reply == {"ok": True, "data": {"device_id": device.device_id, "online": True, "heartbeat_s": 0.333}}
    status, listed = await api.request("GET", f"/api/patients/{patient.id}/devices", patient)
    assert status == 200
    (row,) = listed["items"]
    assert (row["online"], row["battery"], row["firmware"]) == (True, 55, "3.1.0")
    # Silent: disconnected, told once.
    (gone,) = await watcher.events.wait("device:presence", timeout=10)
    assert gone["online"] is False and gone["device_id"] == device.device_id
    (note,) = await watcher.events.wait("notification:new")
    assert note["kind"] == "device_disconnected"
    # Back.
    assert (await device.call("device:heartbeat", {"battery": 54}))["ok"] is True
    presences = await watcher.events.wait("device:presence", count=2)
    assert presences[1]["online"] is True and presences[1]["battery"] == 54
    assert (await watcher.events.wait("notification:new", count=2))[1]["kind"] == "device_reconnected"
    # The same refusals, with the same uniform errors.
    reply = await device.call("device:heartbeat", {"battery": 101})
    assert reply["ok"] is False and reply["error"]["code"] == "invalid_payload"
    assert reply["error"]["details"]["problems"][0]["field"] == "battery"
    for event, payload in (("patients:list", None), ("patient:get", {"patient_id": patient.id}),
                           ("links:create-code", None)):
        reply = await device.call(event, payload)
        assert reply["ok"] is False and reply["error"]["code"] == "forbidden", (rig.transport, event)


async def test_stream_open_frames_and_close(rig: Rig) -> None:
    api = rig.api
    patient = await api.register("patient")
    clinician = await api.register("clinician")
    await api.link(patient, clinician)
    watcher = await api.socket(clinician)
    assert (await watcher.call("live:subscribe", {"patient_id": patient.id, "display_rate": 125}))["ok"] is True
    device = await rig.paired(patient, kind="ecg", serial="ECG-9")
    reply = await device.call("stream:open", {"kind": "ppg", "sampling_rate": 100})
    assert reply["ok"] is False and reply["error"]["code"] == "wrong_kind"
    opened = await device.call("stream:open", {"kind": "ecg", "sampling_rate": 250, "units": "mV"})
    assert opened["ok"] is True and opened["data"]["max_samples"] == 500
    stream_id = opened["data"]["stream_id"]
    samples = [round(0.1 * (i % 25), 2) for i in range(50)]  # 0.2 s at 250 Hz
    for seq in range(5):
        reply = await device.call("stream:frame", {"stream_id": stream_id, "seq": seq, "t0": 1000 + 200 * seq,
                                                   "samples": samples})
        assert reply == {"ok": True, "data": {"seq": seq, "status": "ok"}}
    reply = await device.call("stream:frame", {"stream_id": stream_id, "seq": 3, "t0": 1600, "samples": samples})
    assert reply == {"ok": True, "data": {"seq": 3, "status": "duplicate"}}
    reply = await device.call("stream:frame", {"stream_id": stream_id, "seq": 7, "t0": 2400, "samples": samples})
    assert reply == {"ok": True, "data": {"seq": 7, "status": "gap"}}
    for bad, code in (({"samples": []}, "empty_frame"), ({"samples": ["a"]}, "invalid_payload"),
                      ({"samples": [0.0] * 600}, "frame_too_long"), ({"seq": -1}, "invalid_payload"),
                      ({"stream_id": "0" * 24}, "unknown_stream")):
        reply = await device.call("stream:frame", {"stream_id": stream_id, "seq": 8, "t0": 2600, "samples": samples,
                                                   **bad})
        assert reply["ok"] is False and reply["error"]["code"] == code, (rig.transport, bad, reply)
    frames = await watcher.events.wait("live:frame", count=6)
    assert [f["seq"] for f in frames] == [0, 1, 2, 3, 4, 7] and {f["stream_id"] for f in frames} == {stream_id}
    (gap,) = await watcher.events.wait("live:gap")
    assert gap["missing_frames"] == 2
    closed = await device.call("stream:close", {"stream_id": stream_id})
    assert closed["ok"] is True and closed["data"]["counters"]["ok"] == 5
    status, streams = await api.request("GET", f"/api/patients/{patient.id}/streams", clinician)
    assert status == 200 and streams["items"][0]["id"] == stream_id


async def test_commands_reach_the_device_and_only_it(rig: Rig) -> None:
    api = rig.api
    patient = await api.register("patient")
    box = await rig.paired(patient, kind="medicine_box", serial="BOX-1")
    other = await rig.paired(patient, kind="medicine_box", serial="BOX-2")
    assert (await box.call("device:heartbeat"))["ok"] is True
    assert (await other.call("device:heartbeat"))["ok"] is True
    assert api.app is not None
    command = {"command_id": "c-1", "action": "remind", "drawer": 3, "led": "on", "buzzer": True}
    acked = asyncio.Event()
    await api.app[SERVER].realtime.sio.emit("box:command", command, room=device_room(box.device_id),
                                              callback=lambda *reply: acked.set())
    (received,) = await box.commands.wait("box:command")
    assert received == command
    await asyncio.wait_for(acked.wait(), 5)  # the device's acknowledgement reaches the emitter's callback
    await asyncio.sleep(0.3)
    assert other.commands.of("box:command") == []


async def test_medicine_box_dose_flow(rig: Rig) -> None:
    """The same box behaviour on either transport: hello, the dose's command acknowledged (so not
    resent), the wrong drawer flagged, the right drawer confirming the dose, the LED cleared."""
    api = rig.api
    patient = await api.register("patient")
    p_sock = await api.socket(patient)
    med = await create(p_sock, patient.id, schedule={"as_needed": True}, drawer=2, stock=20)
    box = await rig.paired(patient, kind="medicine_box", serial="BOX-1")
    hello = await box.call("box:hello", {"drawers": [{"index": i} for i in range(1, 5)], "firmware": "fw-2"})
    assert hello["ok"] is True and hello["data"]["assigned"][0]["drawer"] == 2
    dose = await add_dose(patient, med, utcnow() + timedelta(milliseconds=200))
    (remind,) = await box.commands.wait("box:command", timeout=10)
    assert (remind["action"], remind["drawer"], remind["led"], remind["dose_id"]) == ("remind", 2, "on", str(dose.id))
    for _ in range(100):  # the acknowledgement reached the server, whichever transport carried it
        stored = await DoseEvent.get(dose.id)
        if stored is not None and stored.box_acked_at is not None:
            break
        await asyncio.sleep(0.05)
    assert stored is not None and stored.box_acked_at is not None and stored.box_attempts == 1
    wrong = await box.call("box:drawer-opened", {"drawer": 3})
    assert wrong["ok"] is True
    (flag,) = await p_sock.events.wait("box:wrong-drawer")
    assert flag["expected"] == [2]
    opened = await box.call("box:drawer-opened", {"drawer": 2})
    assert opened["ok"] is True and opened["data"]["confirmed"] == [str(dose.id)]
    (confirmed,) = await p_sock.events.wait("dose:confirmed")
    assert confirmed["confirmed_via"] == "box"
    clear = await box.commands.wait("box:command", count=2)
    assert (clear[1]["action"], clear[1]["led"]) == ("clear", "off")
    assert (await box.call("box:drawer-closed", {"drawer": 2}))["ok"] is True
    await asyncio.sleep(1.5)  # acknowledged: never resent
    assert [c["action"] for c in box.commands.of("box:command")] == ["remind", "clear"]
