"""The MQTT side only: the broker's per-device credentials and topic ACLs kept by the server, a
device unable to speak for another, revocation, malformed messages, and several bridges sharing
the device topics without handling a message twice."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from pathlib import Path

import aiomqtt
import pytest

from server.app import SERVER, create_app
from server.core.config import ConfigError
from server.infra.embedded_store import EmbeddedStore
from tests.conftest import Broker, make_settings
from tests.device_clients import MqttDevice, pair_device
from tests.helpers import Api
from tests.test_device_transports import mqtt_app


def passwd_users(broker: Broker) -> dict[str, str]:
    return dict(line.split(":", 1) for line in (broker.folder / "passwd").read_text().splitlines() if line)


def check_hash(stored: str, password: str) -> bool:
    _, alg, rounds, salt, digest = stored.split("$")
    computed = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(rounds), 64)
    return alg == "7" and base64.b64encode(computed).decode() == digest


async def device_row(api: Api, patient, device_id: str) -> dict:  # type: ignore[no-untyped-def]
    _, listed = await api.request("GET", f"/api/patients/{patient.id}/devices", patient)
    return next(d for d in listed["items"] if d["id"] == device_id)


@pytest.fixture
async def api(store: EmbeddedStore, tmp_path: Path, aiohttp_server, mosquitto: Broker):  # type: ignore[no-untyped-def]
    async with await mqtt_app(store, tmp_path, aiohttp_server, mosquitto) as client:
        yield client


async def test_broker_files_follow_pairing_and_revocation(api: Api, mosquitto: Broker) -> None:
    patient = await api.register("patient")
    device_id, credential = await pair_device(api, patient, serial="S-1")
    users = passwd_users(mosquitto)
    assert "healthmate-bridge" in users and check_hash(users[device_id], credential)
    assert credential not in (mosquitto.folder / "passwd").read_text()
    acl = (mosquitto.folder / "acl").read_text()
    assert "pattern write healthmate/devices/%u/up/#" in acl and "pattern read healthmate/devices/%u/down/#" in acl
    device = MqttDevice(mosquitto.port, device_id, credential)
    await device.connect()
    try:
        assert (await device.call("device:heartbeat", {"battery": 70}))["ok"] is True
        status, _ = await api.request("DELETE", f"/api/patients/{patient.id}/devices/{device_id}", patient)
        assert status == 200
        assert device_id not in passwd_users(mosquitto)
        # Whatever the broker does with the open connection, the bridge no longer acts for it.
        try:
            reply = await device.call("device:heartbeat", {"battery": 1}, timeout=3)
            assert reply["ok"] is False and reply["error"]["code"] == "device_revoked"
        except (TimeoutError, aiomqtt.MqttError):
            pass
        assert (await device_row(api, patient, device_id))["battery"] == 70
    finally:
        await device.close()
    # The broker reloads its password file (on the SIGHUP): the revoked credential cannot log in again.
    for _ in range(50):
        again = MqttDevice(mosquitto.port, device_id, credential)
        try:
            await again.connect()
        except aiomqtt.MqttError:
            break
        await again.close()
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the broker still accepts a revoked device's credential")


async def test_a_device_cannot_speak_or_listen_for_another(api: Api, mosquitto: Broker) -> None:
    patient = await api.register("patient")
    other_patient = await api.register("patient")
    a_id, a_cred = await pair_device(api, patient, serial="A")
    b_id, b_cred = await pair_device(api, other_patient, serial="B")
    a = MqttDevice(mosquitto.port, a_id, a_cred)
    await a.connect()
    b = MqttDevice(mosquitto.port, b_id, b_cred)
    await b.connect()
    spy = MqttDevice(mosquitto.port, a_id, a_cred)
    await spy.connect()
    try:
        # A publishes under B's topic: the broker drops it, so the server never hears it.
        await a.publish(f"healthmate/devices/{b_id}/up/device:heartbeat",
                        json.dumps({"id": "forged", "data": {"battery": 1, "firmware": "evil"}}))
        assert (await a.call("device:heartbeat", {"battery": 50}))["ok"] is True  # after the forged one
        await asyncio.sleep(0.5)
        row = await device_row(api, other_patient, b_id)
        assert row["last_seen_at"] is None and row["battery"] is None
        # A listening on B's commands hears nothing of them.
        assert spy.client is not None
        await spy.client.subscribe(f"healthmate/devices/{b_id}/down/#", qos=1)
        await spy.client.subscribe("healthmate/#", qos=1)
        assert (await b.call("device:heartbeat", {"battery": 80}))["ok"] is True
        await asyncio.sleep(0.3)
        assert spy.commands.items == [] and a.commands.items == []
        # Wrong credentials, or a device's credential under another user name, are refused by the broker.
        for device in (MqttDevice(mosquitto.port, a_id, b_cred), MqttDevice(mosquitto.port, b_id, a_cred),
                       MqttDevice(mosquitto.port, a_id, a_cred, username="healthmate-bridge")):
            with pytest.raises(aiomqtt.MqttError):
                await device.connect()
    finally:
        for device in (a, b, spy):
            await device.close()


async def test_malformed_messages_get_an_error_ack(api: Api, mosquitto: Broker) -> None:
    patient = await api.register("patient")
    device_id, credential = await pair_device(api, patient)
    device = MqttDevice(mosquitto.port, device_id, credential)
    await device.connect()
    try:
        for payload in (b"not json", b"[1, 2]", json.dumps({"id": "x", "data": {}, "extra": 1}).encode(), b"\xff\xfe"):
            future = device.acks["None"] = asyncio.get_running_loop().create_future()
            await device.publish(f"healthmate/devices/{device_id}/up/device:heartbeat", payload)
            reply = await asyncio.wait_for(future, 5)
            assert reply["ok"] is False and reply["error"]["code"] == "invalid_json", payload
        for payload, code in ((json.dumps({"id": "x" * 65, "data": None}).encode(), "invalid_json"),
                              (json.dumps({"data": {"battery": 1}, "pad": "x" * 1_000_000}).encode(),
                               "payload_too_large")):
            future = device.acks["None"] = asyncio.get_running_loop().create_future()
            await device.publish(f"healthmate/devices/{device_id}/up/device:heartbeat", payload)
            reply = await asyncio.wait_for(future, 5)
            assert reply["ok"] is False and reply["error"]["code"] == code
        reply = await device.call("no:such-event", {})
        assert reply["ok"] is False and reply["error"]["code"] == "unknown_event"
        reply = await device.call("device:heartbeat", "a string")
        assert reply["ok"] is False and reply["error"]["code"] == "invalid_payload"
        assert (await device.call("device:heartbeat"))["ok"] is True
    finally:
        await device.close()


async def test_two_bridges_share_the_topics_without_double_handling(store: EmbeddedStore, tmp_path: Path,
                                                                   aiohttp_server, mosquitto: Broker) -> None:
    async with await mqtt_app(store, tmp_path, aiohttp_server, mosquitto) as one:
        assert one.app is not None
        settings = one.app[SERVER].settings
        second = await aiohttp_server(create_app(settings))
        bridges = [one.app[SERVER].mqtt, second.app[SERVER].mqtt]
        await asyncio.wait_for(bridges[1].connected.wait(), 10)
        patient = await one.register("patient")
        device = MqttDevice(mosquitto.port, *await pair_device(one, patient))
        await device.connect()
        try:
            acks = await asyncio.gather(*(device.call("device:heartbeat", {"battery": n}) for n in range(20)))
            assert all(a["ok"] for a in acks)
            await asyncio.sleep(0.3)
            assert device.acks == {}
            assert sum(b.handled for b in bridges) == 20 and all(b.handled > 0 for b in bridges)
        finally:
            await device.close()


def test_broker_dir_needs_the_bridge_url(store: EmbeddedStore, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        create_app(make_settings(store.url, tmp_path, mqtt_broker_dir=tmp_path))
    with pytest.raises(ConfigError):
        create_app(make_settings(store.url, tmp_path, mqtt_url="http://x"))
    with pytest.raises(ConfigError):
        create_app(make_settings(store.url, tmp_path, mqtt_url="mqtt://127.0.0.1:1", mqtt_broker_dir=tmp_path))
