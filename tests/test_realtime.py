"""Live connections over real websockets: refused connects carry the uniform error;
acks are ``{"ok": true, "data"}`` or the uniform error; several devices per user."""

from __future__ import annotations

import asyncio

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestServer

from server.app import SERVER, create_app
from server.core.config import Settings
from tests.conftest import TEST_SECRET
from tests.helpers import Api, connect_refused, raw_call, raw_socket
from tests.streaming import device_socket, open_stream, pair


async def test_connect_refused_without_valid_token(api: Api) -> None:
    user = await api.register("patient")
    good = jwt.decode(user.access_token, TEST_SECRET, algorithms=["HS256"], audience="healthmate:access")
    cases = {
        "missing": (None, "token_missing"),
        "not a dict": ("just-a-string", "token_missing"),
        "garbage": ({"token": "abc.def.ghi"}, "token_invalid"),
        "forged": ({"token": jwt.encode(good, "k" * 40, algorithm="HS256")}, "token_invalid"),
        "expired": ({"token": jwt.encode({**good, "exp": good["iat"] - 60}, TEST_SECRET)}, "token_expired"),
        "refresh token": ({"token": user.refresh_token}, "token_invalid"),
    }
    for name, (auth, code) in cases.items():
        data = await connect_refused(api.base_url, auth)
        assert set(data["error"]) == {"code", "message", "details"}, name
        assert data["error"]["code"] == code, name


async def test_revoked_token_refused_at_connect(api: Api) -> None:
    user = await api.register("caregiver")
    await api.request("POST", "/api/auth/logout", user)
    data = await connect_refused(api.base_url, {"token": user.access_token})
    assert data["error"]["code"] == "session_revoked"


async def test_event_acks_ok_and_uniform_errors(api: Api) -> None:
    patient = await api.register("patient")
    sock = await api.socket(patient)
    reply = await sock.call("patients:list")
    assert reply["ok"] is True and [p["id"] for p in reply["data"]] == [patient.id]
    for bad in ({"patient_id": 42}, {"patient_id": "x" * 500}, {"nope": 1}, "string", [1, 2]):
        reply = await sock.call("patient:get", bad)
        assert reply["ok"] is False and set(reply["error"]) == {"code", "message", "details"}, bad
        assert reply["error"]["code"] in {"invalid_payload", "invalid_id"}, reply
    reply = await sock.call("links:list", {"unexpected": True})
    assert reply["ok"] is False and reply["error"]["code"] == "invalid_payload"
    # Still connected and serving after bad input.
    assert (await sock.call("patient:get", {"patient_id": patient.id}))["data"]["id"] == patient.id


async def test_several_devices_of_one_user_all_receive(api: Api) -> None:
    patient = await api.register("patient")
    phone, tablet = await api.socket(patient), await api.socket(patient)
    status, _ = await api.request("PATCH", "/api/me", patient, json={"name": "New Name"})
    assert status == 200
    for device in (phone, tablet):
        (update,) = await device.events.wait("patient:updated")
        assert update["name"] == "New Name"


async def test_logout_disconnects_that_sessions_sockets_only(api: Api) -> None:
    user = await api.register("clinician")
    status, other = await api.request("POST", "/api/auth/login", json={"email": user.email,
                                                                        "password": "plenty-long-passphrase-42"})
    assert status == 200
    mine = await api.socket(user)
    theirs = await api.socket(token=other["access_token"])
    await api.request("POST", "/api/auth/logout", user)
    for _ in range(100):
        if not mine.client.connected:
            break
        await asyncio.sleep(0.05)
    assert not mine.client.connected
    assert theirs.client.connected
    assert (await theirs.call("links:list"))["ok"] is True


async def test_reconnect_with_stale_token_is_refused_then_refresh_works(api: Api) -> None:
    user = await api.register("caregiver")
    sock = await api.socket(user)
    await sock.close()
    claims = jwt.decode(user.access_token, TEST_SECRET, algorithms=["HS256"], audience="healthmate:access")
    stale = jwt.encode({**claims, "iat": claims["iat"] - 3600, "exp": claims["iat"] - 1800}, TEST_SECRET)
    data = await connect_refused(api.base_url, {"token": stale})
    assert data["error"]["code"] == "token_expired"
    status, body = await api.request("POST", "/api/auth/refresh", json={"refresh_token": user.refresh_token})
    assert status == 200
    fresh = await api.socket(token=body["access_token"])
    assert (await fresh.call("patients:list"))["ok"] is True


async def test_ping_echoes_and_tells_server_time(api: Api) -> None:
    import time

    sock = await api.socket(await api.register("patient"))
    reply = await sock.ok("sys:ping", {"t": 12.5})
    assert reply["t"] == 12.5 and abs(reply["server_time_ms"] - time.time() * 1000) < 5000
    bad = await sock.call("sys:ping", {"t": "soon"})
    assert bad["ok"] is False and bad["error"]["code"] == "invalid_payload"


async def test_websocket_declines_per_message_deflate(api: Api) -> None:
    """Clients offer permessage-deflate; the server declines it (server/transport/realtime.py says why) and the
    websocket works uncompressed."""
    url = api.base_url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
    async with api.http.ws_connect(url, compress=15) as ws:
        assert ws.compress == 0
        opened = await ws.receive_str(timeout=5)
        assert opened.startswith("0{") and '"sid"' in opened


async def test_nan_and_infinity_as_python_clients_write_them_get_a_clear_refusal(api: Api) -> None:
    """Python's json writes NaN and Infinity, which are not JSON: such a payload still reaches
    validation and is refused with the uniform error, rather than dropped with no ack."""
    patient = await api.register("patient")
    device = await pair(api, patient, "ecg")
    dev = await device_socket(api, device["credential"])
    stream_id = await open_stream(dev)
    user_ws = await raw_socket(api, {"token": patient.access_token})
    dev_ws = await raw_socket(api, {"device_token": device["credential"]})
    try:
        reply = await raw_call(user_ws, 1, '"bp:add", {"systolic": Infinity, "diastolic": 80, '
                                            '"measured_at": "2026-11-20T08:00:00Z"}')
        assert reply["ok"] is False and reply["error"]["code"] == "invalid_payload", reply
        reply = await raw_call(user_ws, 2, '"sys:ping", {"t": NaN}')
        assert reply["ok"] is False and reply["error"]["code"] == "invalid_payload", reply
        reply = await raw_call(dev_ws, 1, f'"stream:frame", {{"stream_id": "{stream_id}", "seq": 0, "t0": 1000, '
                                          '"samples": [0.1, NaN, -Infinity]}')
        assert reply["ok"] is False and reply["error"]["code"] == "non_finite_samples", reply
        assert (await raw_call(user_ws, 3, '"sys:ping", {"t": 1.5}'))["ok"] is True  # still connected
    finally:
        await user_ws.close()
        await dev_ws.close()


async def test_a_message_that_is_not_a_socket_io_packet_closes_the_connection(api: Api) -> None:
    patient = await api.register("patient")
    ws = await raw_socket(api, {"token": patient.access_token})
    try:
        await ws.send_str('42["sys:ping",{"t": 1')  # cut short
        message = await ws.receive(timeout=5)  # engine.io's close packet: a client hangs up on it
        assert message.type == aiohttp.WSMsgType.TEXT and message.data == "1", message
        await ws.send_str('421["sys:ping",{"t": 1}]')  # one that does not has no session left: no answer
        with pytest.raises(TimeoutError):
            await ws.receive(timeout=1)
    finally:
        await ws.close()


async def test_socketio_background_work_ends_with_the_server(settings: Settings) -> None:
    """python-socketio's background task (Engine.IO's ping checks, started by the first request) ends when the
    server stops, rather than outliving it on the event loop."""
    app = create_app(settings)
    server = TestServer(app)
    await server.start_server()
    try:
        async with Api(str(server.make_url("")).rstrip("/"), app) as client:
            patient = await client.register("patient")
            sock = await client.socket(patient)
            await sock.close()
        task = app[SERVER].realtime.sio.eio.service_task_handle
        assert task is not None and not task.done()
    finally:
        await server.close()
    assert task.done() and app[SERVER].realtime.sio.eio.service_task_handle is None
