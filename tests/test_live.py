"""Watching a patient live over real sockets: decimation to the chosen display rate, a slow watcher
that drops its oldest frames (and says how many) without slowing the device or other watchers,
link revocation that stops frames at once, and fan-out across processes through Redis."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from server.app import SERVER, create_app
from server.streaming.live import QUEUE_FRAMES, decimate, decimation_factor
from tests.conftest import make_settings
from tests.helpers import Api, User
from tests.streaming import device_socket, ecg, frame, open_stream, pair

RATE = 250.0


async def _watched_patient(api: Api, role: str = "caregiver") -> tuple[User, User]:
    patient, member = await api.register("patient"), await api.register(role)
    await api.link(patient, member)
    return patient, member


def test_decimation_is_block_means_continuous_across_frames() -> None:
    assert decimation_factor(250, 125) == 2 and decimation_factor(250, 50) == 5 and decimation_factor(100, 125) == 1
    x = np.arange(1000, dtype=float)
    out, carry = [], None
    for part in np.array_split(x, 7):  # frames whose lengths are not multiples of the factor
        y, carry = decimate(part, 3, carry)
        out.append(y)
    joined = np.concatenate(out)
    assert np.allclose(joined, x[:999].reshape(-1, 3).mean(axis=1)) and carry is not None and carry.size == 1


async def test_watchers_get_frames_at_their_display_rate(api: Api) -> None:
    patient, caregiver = await _watched_patient(api)
    clinician = await api.register("clinician")
    await api.link(patient, clinician)
    default, slow_rate = await api.socket(caregiver), await api.socket(clinician)
    sub = await default.ok("live:subscribe", {"patient_id": patient.id})
    assert sub["display_rate"] == 125 and sub["streams"] == []
    assert (await slow_rate.ok("live:subscribe", {"patient_id": patient.id, "display_rate": 50}))["display_rate"] == 50
    for bad in ({"patient_id": patient.id, "display_rate": 5}, {"patient_id": patient.id, "display_rate": "x"},
                {"patient_id": patient.id, "extra": 1}, {}):
        assert (await default.call("live:subscribe", bad))["error"]["code"] == "invalid_payload", bad
    dev = await device_socket(api, (await pair(api, patient))["credential"])
    stream_id = await open_stream(dev)
    opened = (await default.events.wait("live:stream"))[0]
    assert opened["change"] == "opened" and opened["stream"]["id"] == stream_id
    signal = ecg(2)
    for seq in range(8):  # frames of 62 samples: not a multiple of either factor, the remainder carries over
        await dev.ok("stream:frame", frame(stream_id, seq, signal[seq * 62:(seq + 1) * 62], RATE))
    got = await default.events.wait("live:frame", 8)
    assert all(f["rate"] == 125 and f["stream_id"] == stream_id and f["dropped"] == 0 for f in got)
    received = np.concatenate([np.frombuffer(f["samples"], "<f4") for f in got])
    assert np.allclose(received, signal[:496].reshape(-1, 2).mean(axis=1), atol=1e-5)
    got50 = await slow_rate.events.wait("live:frame", 8)
    assert {f["rate"] for f in got50} == {50}
    assert sum(len(f["samples"]) // 4 for f in got50) == 496 // 5
    # Unsubscribing stops frames; the subscription answer lists the open streams.
    assert (await default.ok("live:unsubscribe", {"patient_id": patient.id}))["unsubscribed"] is True
    await dev.ok("stream:frame", frame(stream_id, 8, signal[496:558], RATE))
    await slow_rate.events.wait("live:frame", 9)
    await asyncio.sleep(0.2)
    assert len(default.events.of("live:frame")) == 8
    sub = await default.ok("live:subscribe", {"patient_id": patient.id})
    assert [s["id"] for s in sub["streams"]] == [stream_id]


class RawWatcher:
    """A Socket.IO client over a bare websocket that stops reading when told: a watcher on a slow link.
    Its receive buffer is tiny, so the server's writes back up as soon as it stops reading."""

    def __init__(self, base_url: str) -> None:
        def small_buffer(addr_info: Any) -> socket.socket:
            family, type_, proto, _, _ = addr_info
            sock = socket.socket(family=family, type=type_, proto=proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            return sock

        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(socket_factory=small_buffer))
        self.url = base_url + "/socket.io/?EIO=4&transport=websocket"
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def connect(self, token: str) -> None:
        self.ws = await self.http.ws_connect(self.url, max_msg_size=0)
        assert (await self.ws.receive_str()).startswith("0")
        await self.ws.send_str("40" + json.dumps({"token": token}))
        assert (await self.ws.receive_str()).startswith("40")

    async def call(self, event: str, data: Any) -> Any:
        assert self.ws is not None
        await self.ws.send_str("420" + json.dumps([event, data]))
        while True:
            msg = await self.ws.receive_str()
            if msg.startswith("430"):
                return json.loads(msg[3:])[0]

    async def frames_dropped(self, timeout: float = 10) -> list[int]:
        """Read what is waiting (and what follows, until quiet); the ``dropped`` counts of the frames."""
        assert self.ws is not None
        dropped = []
        while True:
            try:
                msg = await self.ws.receive(timeout=timeout)
            except TimeoutError:
                return dropped
            timeout = 1.0
            if msg.type == aiohttp.WSMsgType.TEXT:
                if msg.data == "2":
                    await self.ws.send_str("3")
                elif '"live:frame"' in msg.data:
                    dropped.append(int(re.search(r'"dropped":(\d+)', msg.data).group(1)))  # type: ignore[union-attr]
            elif msg.type != aiohttp.WSMsgType.BINARY:
                return dropped

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        await self.http.close()


@pytest.fixture
async def fast_device_api(store: Any, tmp_path: Path, aiohttp_server: Any) -> Any:
    """A server whose per-connection and per-sender event limits let a device send hundreds of frames a second."""
    settings = make_settings(store.url, tmp_path, event_rate_per_s=2000.0, event_burst=2000,
                             user_event_rate_per_s=2000.0, user_event_burst=2000)
    server = await aiohttp_server(create_app(settings))
    async with Api.of(server) as client:
        yield client


async def test_slow_watcher_drops_oldest_without_slowing_device_or_others(fast_device_api: Api) -> None:
    api = fast_device_api
    patient, caregiver = await _watched_patient(api)
    clinician = await api.register("clinician")
    await api.link(patient, clinician)
    fast = await api.socket(clinician)
    await fast.ok("live:subscribe", {"patient_id": patient.id, "display_rate": 1000})
    slow = RawWatcher(api.base_url)
    try:
        await slow.connect(caregiver.access_token)
        assert (await slow.call("live:subscribe", {"patient_id": patient.id, "display_rate": 1000}))["ok"] is True
        dev = await device_socket(api, (await pair(api, patient))["credential"])
        opened = await dev.ok("stream:open", {"kind": "ecg", "sampling_rate": 1000})
        stream_id = opened["stream_id"]
        samples = np.sin(np.arange(2000) / 50.0)  # 2 s frames at 1000 Hz: 8 KB to each watcher
        live = api.app[SERVER].live  # type: ignore[index]
        total = 600
        for seq in range(total):  # as fast as the device can: acks must not wait for the slow watcher
            reply = await asyncio.wait_for(dev.call("stream:frame", frame(stream_id, seq, samples, 1000.0)), 2)
            assert reply["ok"] is True
        watcher = next(w for w in live.watchers[patient.id] if w.user_id == caregiver.id)
        assert len(watcher.frames) <= QUEUE_FRAMES and watcher.dropped_total > 0  # bounded, oldest gone
        got = await fast.events.wait("live:frame", total, timeout=30)
        assert [f["seq"] for f in got] == list(range(total)) and all(f["dropped"] == 0 for f in got)
        # The slow watcher catches up with the newest frames and is told how many it missed.
        dropped = await slow.frames_dropped()
        assert sum(dropped) == watcher.dropped_total and max(dropped) > 0
        assert len(dropped) + sum(dropped) == total
    finally:
        await slow.close()


async def test_revoked_link_stops_frames_at_once(api: Api) -> None:
    patient, caregiver = await _watched_patient(api)
    clinician = await api.register("clinician")
    await api.link(patient, clinician)
    carer, doctor, me = await api.socket(caregiver), await api.socket(clinician), await api.socket(patient)
    for s in (carer, doctor):
        await s.ok("live:subscribe", {"patient_id": patient.id})
    dev = await device_socket(api, (await pair(api, patient))["credential"])
    stream_id = await open_stream(dev)
    signal = ecg(4)
    await dev.ok("stream:frame", frame(stream_id, 0, signal[:125], RATE))
    await carer.events.wait("live:frame")
    link_id = next(lk["id"] for lk in await me.ok("links:list") if lk["member"]["id"] == caregiver.id)
    await me.ok("links:revoke", {"link_id": link_id})
    ended = await carer.events.wait("live:ended")
    assert ended[0] == {"patient_id": patient.id, "reason": "link_revoked"}
    seen = len(carer.events.of("live:frame"))
    for seq in range(1, 6):
        await dev.ok("stream:frame", frame(stream_id, seq, signal[seq * 125:(seq + 1) * 125], RATE))
    await doctor.events.wait("live:frame", 6)
    await asyncio.sleep(0.3)
    assert len(carer.events.of("live:frame")) == seen == 1
    reply = await carer.call("live:subscribe", {"patient_id": patient.id})
    assert reply["ok"] is False and reply["error"]["code"] == "forbidden"


@pytest.fixture
async def two_servers(store: Any, redis_url: str, tmp_path: Path, aiohttp_server: Any) -> Any:
    settings = make_settings(store.url, tmp_path, redis_url=redis_url)
    a = await aiohttp_server(create_app(settings))
    b = await aiohttp_server(create_app(settings))
    async with Api.of(a) as api_a, Api.of(b) as api_b:
        yield api_a, api_b


async def test_watcher_on_another_process_gets_frames_and_revocation_applies_there(two_servers: Any) -> None:
    api_a, api_b = two_servers
    patient, caregiver = await _watched_patient(api_a)
    watcher = await api_b.socket(caregiver)
    await watcher.ok("live:subscribe", {"patient_id": patient.id, "display_rate": 250})
    dev = await device_socket(api_a, (await pair(api_a, patient))["credential"])
    stream_id = await open_stream(dev)
    signal = ecg(3)
    for seq in range(4):
        await dev.ok("stream:frame", frame(stream_id, seq, signal[seq * 125:(seq + 1) * 125], RATE))
    got = await watcher.events.wait("live:frame", 4)
    assert [f["seq"] for f in got] == [0, 1, 2, 3]
    assert np.allclose(np.frombuffer(got[0]["samples"], "<f4"), signal[:125], atol=1e-5)
    assert (await watcher.events.wait("live:stream"))[0]["change"] == "opened"
    me = await api_a.socket(patient)
    link_id = next(lk["id"] for lk in await me.ok("links:list") if lk["member"]["id"] == caregiver.id)
    await me.ok("links:revoke", {"link_id": link_id})
    await watcher.events.wait("live:ended")
    await dev.ok("stream:frame", frame(stream_id, 4, signal[500:625], RATE))
    await asyncio.sleep(0.3)
    assert len(watcher.events.of("live:frame")) == 4
