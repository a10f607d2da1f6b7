"""Abuse limits at the transport: events per connection and per user, connections per address,
unknown events; each refusal is the uniform error and the connection keeps serving."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from server.app import create_app
from server.infra.embedded_store import EmbeddedStore
from server.infra.ratelimit import TokenBuckets
from tests.conftest import make_settings
from tests.helpers import Api, connect_refused
from tests.streaming import device_socket


def test_token_buckets_refill_and_stay_bounded() -> None:
    buckets = TokenBuckets(rate=2.0, burst=3, max_keys=10)
    assert [buckets.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a", now=0.0) == pytest.approx(0.5)
    assert buckets.take("a", now=0.5) == 0.0  # one token back after half a second
    for i in range(100):
        buckets.take(f"k{i}", now=1.0)
    assert len(buckets._buckets) == 10


@pytest.fixture
async def tight(store: EmbeddedStore, tmp_path: Path, aiohttp_server) -> AsyncIterator[Api]:  # type: ignore[no-untyped-def]
    settings = make_settings(store.url, tmp_path, event_rate_per_s=1, event_burst=10, user_event_rate_per_s=1,
                             user_event_burst=15, connect_rate_per_s=1, connect_burst=6)
    server = await aiohttp_server(create_app(settings))
    async with Api.of(server) as client:
        yield client


async def test_events_limited_per_connection_and_per_user(tight: Api) -> None:
    user = await tight.register("patient")
    one, two = await tight.socket(user), await tight.socket(user)
    replies = await asyncio.gather(*[one.call("patients:list") for _ in range(14)])
    limited = [r for r in replies if not r["ok"]]
    assert sum(r["ok"] for r in replies) == 10 and len(limited) == 4
    assert limited[0]["error"]["code"] == "rate_limited" and limited[0]["error"]["details"]["retry_after_s"] > 0
    # The user's other connection has its own connection budget but shares the user's (15 in all).
    replies = await asyncio.gather(*[two.call("patients:list") for _ in range(8)])
    assert sum(r["ok"] for r in replies) == 5
    await asyncio.sleep(1.2)
    assert (await one.call("patients:list"))["ok"] is True  # refilled; still connected


async def test_connection_flood_from_one_address_refused(tight: Api) -> None:
    user = await tight.register("caregiver")
    for _ in range(6):
        await tight.socket(user)
    data = await connect_refused(tight.base_url, {"token": user.access_token})
    assert data["error"]["code"] == "too_many_connections" and data["error"]["details"]["retry_after_s"] > 0


async def test_unknown_event_gets_the_uniform_error(api: Api) -> None:
    sock = await api.socket(await api.register("patient"))
    reply = await sock.call("no:such-event", {"x": 1})
    assert reply == {"ok": False, "error": {"code": "unknown_event", "message": "No such event",
                                            "details": {"event": "no:such-event"}}}


async def test_data_channel_messages_share_the_device_connection_limits(
        store: EmbeddedStore, tmp_path: Path, aiohttp_server) -> None:  # type: ignore[no-untyped-def]
    """A device's WebRTC data channel runs each message through the same event pipeline as its Socket.IO
    connection: the same per-connection budget (10 here, hardly refilled), so the channel is no way around
    the limits."""
    settings = make_settings(store.url, tmp_path, event_rate_per_s=0.01, event_burst=10)
    server = await aiohttp_server(create_app(settings))
    async with Api.of(server) as tight:
        await _flood_the_data_channel(tight)


async def _flood_the_data_channel(tight: Api) -> None:
    patient = await tight.register("patient")
    status, paired = await tight.request("POST", f"/api/patients/{patient.id}/devices", patient,
                                         json={"kind": "ecg", "serial": "E-LIM", "model": "Patch"})
    assert status == 201
    device = await device_socket(tight, paired["credential"])
    pc = RTCPeerConnection()
    channel = pc.createDataChannel("frames")
    replies: asyncio.Queue[dict] = asyncio.Queue()
    opened = asyncio.Event()
    channel.on("open", opened.set)
    channel.on("message", lambda m: replies.put_nowait(json.loads(m)))
    try:
        await pc.setLocalDescription(await pc.createOffer())
        answer = await device.ok("stream:rtc-offer", {"sdp": pc.localDescription.sdp})  # 1 of the 10
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        await asyncio.wait_for(opened.wait(), 10)
        for _ in range(12):
            channel.send(json.dumps({"op": "open", "kind": "ecg", "sampling_rate": 250}))
        got = [await asyncio.wait_for(replies.get(), 5) for _ in range(12)]
        assert sum(r["ok"] for r in got) == 9
        assert {r["error"]["code"] for r in got if not r["ok"]} == {"rate_limited"}
    finally:
        await pc.close()
