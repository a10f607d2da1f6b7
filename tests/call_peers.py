"""Client-side WebRTC peers (aiortc) that place calls through the project's Socket.IO events: a tone
generator to send, sinks that count the frames received and how many carried sound."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiortc import AudioStreamTrack, MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp
from av import AudioFrame

from tests.helpers import Api, Sock, User


class ToneTrack(AudioStreamTrack):
    """A paced sine tone (aiortc's AudioStreamTrack gives 20 ms of 8 kHz mono per frame)."""

    def __init__(self, hz: float) -> None:
        super().__init__()
        self.hz = hz
        self.sent = 0

    async def recv(self) -> AudioFrame:
        frame = await super().recv()
        t = (np.arange(frame.samples) + frame.pts) / frame.sample_rate
        frame.planes[0].update((np.sin(2 * math.pi * self.hz * t) * 8000).astype(np.int16).tobytes())
        self.sent += 1
        return frame


@dataclass(eq=False)
class Sink:
    """Reads a received track: counts frames, and those with sound (not the relay's silence)."""

    track: MediaStreamTrack
    frames: int = 0
    loud: int = 0
    first_at: float | None = None
    first_loud_at: float | None = None
    task: asyncio.Task[None] | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                frame = await self.track.recv()
                self.frames += 1
                self.first_at = self.first_at or time.monotonic()
                if np.abs(frame.to_ndarray().astype(np.int32)).mean() > 200:
                    self.loud += 1
                    if self.first_loud_at is None:
                        self.first_loud_at = time.monotonic()
                        self.arrived.set()


class CallPeer:
    """One participant's WebRTC side, signalling over its Socket.IO client."""

    def __init__(self, sock: Sock, hz: float) -> None:
        self.sock = sock
        self.tone = ToneTrack(hz)
        self.pc = RTCPeerConnection()
        self.sinks: list[Sink] = []
        self._trickle: asyncio.Task[None] | None = None
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        sink = Sink(track)
        sink.task = asyncio.create_task(sink.run())
        self.sinks.append(sink)

    async def _signal(self, call_id: str, kind: str, sdp: str) -> None:
        await self.sock.ok("call:signal", {"call_id": call_id, "type": kind, "sdp": sdp})

    async def _next_signal(self, kind: str, timeout: float = 10) -> dict[str, Any]:
        seen = len(self.sock.events.of("call:peer-signal"))
        while True:
            signals = await self.sock.events.wait("call:peer-signal", seen + 1, timeout=timeout)
            seen = len(signals)
            if signals[-1]["type"] == kind:
                return signals[-1]

    async def offer(self, call_id: str) -> None:
        """Caller: send the offer (aiortc puts every candidate in it), apply the answer."""
        self.pc.addTrack(self.tone)
        waiting = asyncio.create_task(self._next_signal("answer"))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        await self._signal(call_id, "offer", self.pc.localDescription.sdp)
        answer = await waiting
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))

    async def answer(self, call_id: str) -> None:
        """Callee: wait for the offer, answer it, then apply the candidates the other side trickles
        (a browser sends them separately, possibly even before its offer)."""
        offer = await self._next_signal("offer")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        self.pc.addTrack(self.tone)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        await self._signal(call_id, "answer", self.pc.localDescription.sdp)
        self._trickle = asyncio.create_task(self._apply_candidates())

    async def _apply_candidates(self) -> None:
        done = 0
        while True:
            signals = self.sock.events.of("call:peer-signal")
            for signal in signals[done:]:
                c = signal.get("candidate") if signal["type"] == "candidate" else None
                if c and c["candidate"]:
                    candidate = candidate_from_sdp(c["candidate"].split(":", 1)[1])
                    candidate.sdpMid, candidate.sdpMLineIndex = c.get("sdpMid"), c.get("sdpMLineIndex")
                    await self.pc.addIceCandidate(candidate)
            done = len(signals)
            with contextlib.suppress(TimeoutError):
                await self.sock.events.wait("call:peer-signal", done + 1, timeout=1)

    async def connect_relay(self, call_id: str, slots: int) -> None:
        """Connect to the server's relay instead: our tone out, ``slots`` audio tracks in."""
        await self.pc.close()
        self.pc = RTCPeerConnection()
        self.pc.on("track", self._on_track)
        self.sinks = []
        self.tone = ToneTrack(self.tone.hz)  # closing the old connection stopped the old one
        self.pc.addTrack(self.tone)
        for _ in range(slots - 1):
            self.pc.addTransceiver("audio", direction="recvonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        answer = await self.sock.ok("call:media-offer", {"call_id": call_id, "sdp": self.pc.localDescription.sdp})
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))

    async def heard(self, sinks: int = 1, timeout: float = 10) -> list[Sink]:
        """Wait until ``sinks`` received tracks carry sound."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            loud = [s for s in self.sinks if s.loud > 0]
            if len(loud) >= sinks:
                return loud
            await asyncio.sleep(0.05)
        raise AssertionError(f"heard {[(s.frames, s.loud) for s in self.sinks]} on {len(self.sinks)} tracks; "
                             f"connection {self.pc.connectionState}, ice {self.pc.iceConnectionState}")

    async def close(self) -> None:
        if self._trickle is not None:
            self._trickle.cancel()
        for sink in self.sinks:
            if sink.task is not None:
                sink.task.cancel()
        await self.pc.close()


async def recorded_call(api: Api, caller: User, callee: User) -> str:
    """A real audio call from ``caller`` to ``callee``, both consenting to its recording: the server relays and
    records it until the caller hangs up, then stores it. The call's id, once its recording is downloadable."""
    s_caller, s_callee = await api.socket(caller), await api.socket(callee)
    call = await s_caller.ok("call:invite", {"callee": callee.id, "media": "audio"})
    await s_callee.events.wait("call:incoming")
    await s_callee.ok("call:accept", {"call_id": call["id"]})
    for sock in (s_caller, s_callee):
        await sock.ok("call:consent", {"call_id": call["id"], "record": True})
    (relay,) = await s_caller.events.wait("call:relay")
    peers = CallPeer(s_caller, 440), CallPeer(s_callee, 660)
    try:
        await asyncio.gather(*(p.connect_relay(call["id"], relay["slots"]) for p in peers))
        for peer in peers:
            await peer.heard(1)
        await s_caller.ok("call:hangup", {"call_id": call["id"]})
    finally:
        for peer in peers:
            await peer.close()
    for _ in range(100):
        _, history = await api.request("GET", "/api/calls", caller)
        recording = next(c for c in history["items"] if c["id"] == call["id"])["recording"]
        if recording["bytes"]:
            return str(call["id"])
        await asyncio.sleep(0.1)
    raise AssertionError(f"the recording of {call['id']} was not stored: {recording}")
