"""A device streams its waveform over a WebRTC data channel (aiortc) instead of Socket.IO frames:
the frames go through the same stream service, so a watching caregiver sees them live."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription

from server.app import SERVER
from server.streaming.history import Stream
from tests.helpers import Api
from tests.streaming import device_socket

RATE, PER_FRAME, FRAMES = 250.0, 50, 20


async def test_device_frames_over_a_data_channel_reach_the_stream_service(api: Api) -> None:
    patient, carer = await api.register("patient"), await api.register("caregiver")
    await api.link(patient, carer)
    status, paired = await api.request("POST", f"/api/patients/{patient.id}/devices", patient,
                                       json={"kind": "ecg", "serial": "E-RTC", "model": "Patch"})
    assert status == 201
    device = await device_socket(api, paired["credential"])
    watcher = await api.socket(carer)
    await watcher.ok("live:subscribe", {"patient_id": patient.id})

    # Users cannot offer a device data channel; a device cannot offer without one.
    reply = await watcher.call("stream:rtc-offer", {"sdp": "v=0"})
    assert reply["error"]["code"] == "forbidden"
    reply = await device.call("stream:rtc-offer", {"sdp": "v=0\r\n"})
    assert reply["error"]["code"] == "invalid_sdp"

    pc = RTCPeerConnection()
    channel = pc.createDataChannel("frames")
    replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    opened = asyncio.Event()
    channel.on("open", opened.set)
    channel.on("message", lambda m: replies.put_nowait(json.loads(m)))
    try:
        await pc.setLocalDescription(await pc.createOffer())
        answer = await device.ok("stream:rtc-offer", {"sdp": pc.localDescription.sdp})
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        await asyncio.wait_for(opened.wait(), 10)

        channel.send(json.dumps({"op": "open", "kind": "ecg", "sampling_rate": RATE}))
        opening = await asyncio.wait_for(replies.get(), 5)
        assert opening["ok"] is True and opening["op"] == "open", opening
        stream_id = opening["data"]["stream_id"]
        signal = np.sin(np.arange(FRAMES * PER_FRAME) / RATE * 2 * np.pi).astype("<f4")
        for seq in range(FRAMES):
            header = json.dumps({"op": "frame", "stream_id": stream_id, "seq": seq, "t0": 1000 + seq * 200,
                                 "dtype": "float32"}).encode()
            channel.send(header + b"\n" + signal[seq * PER_FRAME:(seq + 1) * PER_FRAME].tobytes())
        channel.send(json.dumps({"op": "frame", "stream_id": stream_id, "seq": FRAMES, "t0": 5000,
                                 "samples": [0.1, 0.2, 0.3]}))
        # Bad messages get the uniform error on the channel and change nothing.
        channel.send("not json")
        channel.send(json.dumps({"op": "frame", "stream_id": stream_id, "seq": -1, "t0": 0, "samples": []}))
        channel.send(json.dumps({"op": "drop_tables"}))
        got = [await asyncio.wait_for(replies.get(), 5) for _ in range(FRAMES + 4)]
        frames = got[:FRAMES + 1]
        assert [r["data"]["status"] for r in frames] == ["ok"] * (FRAMES + 1), frames[:3]
        assert [r["seq"] for r in frames] == list(range(FRAMES + 1))
        assert [r["error"]["code"] for r in got[FRAMES + 1:]] == ["invalid_message", "invalid_payload",
                                                                  "invalid_message"]

        # The same path as stream:frame: the caregiver watching sees the frames live.
        live = await watcher.events.wait("live:frame", FRAMES + 1, timeout=10)
        assert {f["stream_id"] for f in live} == {stream_id}
        assert [f["seq"] for f in live] == list(range(FRAMES + 1))
        doc = await Stream.get(stream_id)
        assert doc is not None and str(doc.patient_id) == patient.id and doc.kind == "ecg"

        # The device's socket going away closes its data-channel peer.
        rtc = api.app[SERVER].rtc  # type: ignore[index]
        assert len(rtc.peers) == 1
        await device.close()
        for _ in range(50):
            if not rtc.peers:
                break
            await asyncio.sleep(0.05)
        assert not rtc.peers
    finally:
        await pc.close()
