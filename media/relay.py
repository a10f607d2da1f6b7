"""A multi-party call through the server: every participant's WebRTC connection ends here and each
participant's incoming tracks are forwarded to every other participant through aiortc's MediaRelay.

No renegotiation is needed when someone joins or leaves: a participant offers one transceiver per
(kind, other participant) it wants to hear or see (the first one also carrying its own track), and
each of our answering tracks is a ``SlotTrack`` whose source is attached once the other participant's
track arrives, sending silence (or black) until then and after they leave. Timestamps are rewritten
so the stream stays continuous across source changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import time
from dataclasses import dataclass, field

from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, VideoFrame

from media.recording import CallRecording

log = logging.getLogger(__name__)
AUDIO_RATE, AUDIO_SAMPLES = 48000, 960  # what aiortc's Opus decoder produces: 20 ms, s16 stereo
VIDEO_CLOCK, VIDEO_FPS = 90000, 15
QUEUE_FRAMES = 8  # per outgoing slot: 160 ms of audio
CLOSE_TIMEOUT_S = 5.0
SOURCE_WAIT_S = 0.06  # a source silent this long is replaced by filler until it speaks again


class SlotTrack(MediaStreamTrack):
    """An outgoing track fed by whichever source is attached; filler (silence, black) while none is, or
    while the source is silent. A pump task reads the source into a short queue that drops the oldest,
    so a slow receiver never holds frames back from the others or grows memory."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.source_id: str | None = None
        self._pump: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[AudioFrame | VideoFrame] = asyncio.Queue(QUEUE_FRAMES)
        self._start: float | None = None
        self._pts = 0
        self.forwarded = 0

    @property
    def attached(self) -> bool:
        return self._pump is not None

    def attach(self, source: MediaStreamTrack | None, source_id: str | None = None) -> None:
        if self._pump is not None:
            self._pump.cancel()
            self._pump = None
        self.source_id = source_id if source is not None else None
        if source is not None:
            self._pump = asyncio.create_task(self._read(source))

    async def _read(self, source: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await source.recv()
                if self._queue.full():
                    self._queue.get_nowait()
                self._queue.put_nowait(frame)
        self.source_id = None
        self._pump = None

    def stop(self) -> None:
        self.attach(None)
        super().stop()

    async def recv(self) -> AudioFrame | VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        try:
            async with asyncio.timeout(SOURCE_WAIT_S):
                frame = await self._queue.get()
            self.forwarded += 1
        except TimeoutError:
            frame = await self._filler()
        return self._restamp(frame)

    async def _filler(self) -> AudioFrame | VideoFrame:
        assert self._start is not None
        if self.kind == "audio":
            frame = AudioFrame(format="s16", layout="stereo", samples=AUDIO_SAMPLES)
            for plane in frame.planes:
                plane.update(bytes(plane.buffer_size))
            frame.sample_rate = AUDIO_RATE
            due = self._start + self._pts / AUDIO_RATE
        else:
            frame = VideoFrame(width=320, height=240)
            for plane in frame.planes:
                plane.update(bytes(plane.buffer_size))
            due = time.monotonic() + 1 / VIDEO_FPS
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        return frame

    def _restamp(self, frame: AudioFrame | VideoFrame) -> AudioFrame | VideoFrame:
        if isinstance(frame, AudioFrame):
            frame.pts = self._pts
            frame.time_base = fractions.Fraction(1, frame.sample_rate)
            self._pts += frame.samples
        else:
            assert self._start is not None
            frame.pts = int((time.monotonic() - self._start) * VIDEO_CLOCK)
            frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        return frame


@dataclass(eq=False)
class Member:
    id: str
    pc: RTCPeerConnection
    slots: list[SlotTrack] = field(default_factory=list)
    tracks: list[MediaStreamTrack] = field(default_factory=list)  # what they send us


class MediaRoom:
    """The server end of one relayed call; it lives as long as the call."""

    def __init__(self, max_members: int = 4, ice_servers: list | None = None) -> None:
        self.relay = MediaRelay()
        self.members: dict[str, Member] = {}
        self.max_members = max_members
        self.config = RTCConfiguration(iceServers=ice_servers or [])
        self.recording: CallRecording | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def connect(self, member_id: str, offer_sdp: str) -> str:
        """Answer ``member_id``'s offer (replacing an earlier connection of theirs); returns the answer SDP."""
        await self.leave(member_id)
        if len(self.members) >= self.max_members:
            raise RoomFull(self.max_members)
        pc = RTCPeerConnection(self.config)
        member = Member(member_id, pc)
        self.members[member_id] = member

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            member.tracks.append(track)
            self._record(track)
            for other in self.members.values():
                if other is not member:
                    self._feed(other, member, track)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed") and self.members.get(member_id) is member:
                await self.leave(member_id)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            if not pc.getTransceivers():
                raise ValueError("the offer has no audio or video")
            for transceiver in pc.getTransceivers():
                slot = SlotTrack(transceiver.kind)
                member.slots.append(slot)
                pc.addTrack(slot)
            for other in list(self.members.values()):
                if other is not member:
                    for track in other.tracks:
                        self._feed(member, other, track)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception:
            await self.leave(member_id)
            raise
        return pc.localDescription.sdp

    def _feed(self, to: Member, source: Member, track: MediaStreamTrack) -> None:
        """Forward ``source``'s ``track`` into a free slot of ``to`` (one per source and kind)."""
        slots = [s for s in to.slots if s.kind == track.kind]
        if any(s.source_id == source.id for s in slots):
            return
        free = next((s for s in slots if not s.attached), None)
        if free is None:
            log.info("%s has no free %s slot for %s", to.id, track.kind, source.id)
            return
        free.attach(self.relay.subscribe(track, buffered=False), source.id)

    def _record(self, track: MediaStreamTrack) -> None:
        if self.recording is not None:
            task = asyncio.create_task(self.recording.add(self.relay.subscribe(track, buffered=False)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def record(self, recording: CallRecording) -> None:
        """Record from now on: the tracks already here, and those that arrive."""
        self.recording = recording
        for member in self.members.values():
            for track in member.tracks:
                self._record(track)

    async def stop_recording(self) -> int | None:
        """Finish the recording; its size in bytes (None if there was none)."""
        recording, self.recording = self.recording, None
        return await recording.stop() if recording is not None else None

    async def leave(self, member_id: str) -> None:
        member = self.members.pop(member_id, None)
        if member is None:
            return
        for other in self.members.values():
            for slot in other.slots:
                if slot.source_id == member_id:
                    slot.attach(None)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(member.pc.close(), CLOSE_TIMEOUT_S)

    async def close(self) -> int | None:
        """End the room; the size of its recording, if it had one."""
        size = await self.stop_recording()
        for member_id in list(self.members):
            await self.leave(member_id)
        return size

    def stats(self) -> dict[str, dict[str, int]]:
        """Frames forwarded to each member (audio and video), by the member they came from."""
        out: dict[str, dict[str, int]] = {}
        for m in self.members.values():
            counts = out.setdefault(m.id, {})
            for slot in m.slots:
                if slot.source_id is not None:
                    counts[slot.source_id] = counts.get(slot.source_id, 0) + slot.forwarded
        return out


class RoomFull(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"at most {limit} participants")
        self.limit = limit
