"""The media relay on its own, with real aiortc peers: audio and video forwarded between members,
filler (silence, black) in a slot whose member has not arrived or has left."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from av import VideoFrame

from media.relay import MediaRoom
from tests.call_peers import ToneTrack


class GreyTrack(VideoStreamTrack):
    """Mid-grey frames, so forwarded video is told apart from the relay's black filler."""

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = VideoFrame.from_ndarray(np.full((120, 160, 3), 128, dtype=np.uint8), format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


class Member:
    def __init__(self) -> None:
        self.pc = RTCPeerConnection()
        self.frames: dict[str, list[float]] = {"audio": [], "video": []}  # mean level of each frame received
        self.tasks: list[asyncio.Task[None]] = []
        self.pc.on("track", lambda track: self.tasks.append(asyncio.create_task(self._read(track))))

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame: Any = await track.recv()
            except Exception:
                return
            data = frame.to_ndarray(format="gray") if track.kind == "video" else frame.to_ndarray()
            self.frames[track.kind].append(float(np.abs(data.astype(np.int32)).mean()))

    async def join(self, room: MediaRoom, name: str, slots: int) -> None:
        self.pc.addTrack(ToneTrack(440))
        self.pc.addTrack(GreyTrack())
        for _ in range(slots - 1):
            self.pc.addTransceiver("audio", direction="recvonly")
            self.pc.addTransceiver("video", direction="recvonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        answer = await room.connect(name, self.pc.localDescription.sdp)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await self.pc.close()


async def wait_for(condition: Any, timeout: float = 15) -> None:
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


async def test_audio_and_video_forwarded_and_filler_until_a_member_arrives() -> None:
    room = MediaRoom(max_members=3)
    a, b = Member(), Member()
    try:
        await a.join(room, "a", slots=1)
        # Alone in the room: silence and black, still paced.
        await wait_for(lambda: len(a.frames["audio"]) > 10 and len(a.frames["video"]) > 3)
        assert max(a.frames["audio"]) < 50 and max(a.frames["video"]) < 40
        await b.join(room, "b", slots=1)
        for m in (a, b):
            await wait_for(lambda m=m: sum(v > 200 for v in m.frames["audio"]) > 10
                           and sum(80 < v < 180 for v in m.frames["video"]) > 3)
        forwarded = room.stats()
        assert forwarded["a"]["b"] > 10 and forwarded["b"]["a"] > 10
        # b leaves: a's slots fall back to filler (the stream goes on).
        await room.leave("b")
        heard = len(a.frames["audio"])
        await wait_for(lambda: len(a.frames["audio"]) > heard + 20)
        assert max(a.frames["audio"][-10:]) < 50
        assert room.stats() == {"a": {}}
    finally:
        await room.close()
        await a.close()
        await b.close()
