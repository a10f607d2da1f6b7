"""The relayed calls whose media this process serves (a ``MediaRoom`` each), and the way to reach the
room another process serves: a member's offer arriving here is passed to that process over pub/sub (a
request on its channel, the answer on a one-off reply channel).

Closing a room, or just its recording, takes a while (peer connections, the recorder's last frames),
so it runs in the background, awaited (briefly) at stop; what was recorded is handed to the
``on_recorded`` hooks (the calls concern stores it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.core.background import Background
from server.core.errors import ApiError, as_api_error
from server.infra.pubsub import PubSub

if TYPE_CHECKING:  # aiortc loads with the first relayed call, not with every server
    from media.relay import MediaRoom

log = logging.getLogger(__name__)
MEDIA_CHANNEL = "healthmate:calls:media:"  # + host process id: media offers forwarded to the host
FORWARD_TIMEOUT_S = 10.0
STOP_WAIT_S = 10.0
Recorded = Callable[[str, int], Awaitable[None]]  # (room id, size in bytes of the file written)


class MediaHost:
    def __init__(self, pubsub: PubSub, process_id: str, max_members: int) -> None:
        self.pubsub = pubsub
        self.process_id = process_id
        self.max_members = max_members
        self.rooms: dict[str, MediaRoom] = {}
        self.on_recorded: list[Recorded] = []
        self.background = Background()  # teardowns: nobody's event or the control bus waits for them

    async def start(self) -> None:
        if self.pubsub.shared:
            await self.pubsub.subscribe(MEDIA_CHANNEL + self.process_id, self._on_request)

    async def stop(self) -> None:
        for room_id in list(self.rooms):
            self.close(room_id)
        await self.background.stop(drain_s=STOP_WAIT_S)

    def room(self, room_id: str) -> MediaRoom:
        """The room, opened here if it is not yet."""
        from media.relay import MediaRoom

        room = self.rooms.get(room_id)
        if room is None:
            room = self.rooms[room_id] = MediaRoom(self.max_members)
        return room

    async def connect(self, host: str, room_id: str, member: str, sdp: str) -> str:
        """Answer ``member``'s SDP offer in the room served by process ``host`` (this one or another)."""
        if host != self.process_id:
            return await self._forward(host, room_id, member, sdp)
        room = self.rooms.get(room_id)
        if room is None:
            raise ApiError("not_relayed", "This call's media is no longer served", 409)
        from media.relay import RoomFull

        try:
            return await room.connect(member, sdp)
        except RoomFull as exc:
            raise ApiError("call_full", str(exc), 409) from None
        except Exception as exc:
            log.info("media offer for %s refused: %s", room_id, exc)
            raise ApiError("invalid_sdp", "The SDP offer could not be used", 422) from None

    async def leave(self, room_id: str, member: str) -> None:
        room = self.rooms.get(room_id)
        if room is not None:
            await room.leave(member)

    def record(self, room_id: str, path: Path, tracks: int) -> None:
        """Record the room into ``path`` once ``tracks`` tracks are in."""
        from media.recording import CallRecording

        self.room(room_id).record(CallRecording(path, tracks))

    def stop_recording(self, room_id: str) -> None:
        room = self.rooms.get(room_id)
        if room is not None:
            self.background.spawn(self._teardown(room_id, room.stop_recording()))

    def close(self, room_id: str) -> None:
        """End the room (nobody's hang-up waits for its peer connections to close)."""
        room = self.rooms.pop(room_id, None)
        if room is not None:
            self.background.spawn(self._teardown(room_id, room.close()))

    async def _teardown(self, room_id: str, closing: Awaitable[int | None]) -> None:
        """Close the room (or just its recording) and hand on what was recorded."""
        try:
            size = await closing
            if size is not None:
                for hook in self.on_recorded:
                    await hook(room_id, size)
        except Exception:
            log.exception("tearing down the media of %s", room_id)

    # --- offers for a room served by another process ----------------------------------------------

    async def _forward(self, host: str, room_id: str, member: str, sdp: str) -> str:
        if not self.pubsub.shared:
            raise ApiError("media_elsewhere", "This call's media is served by another server process", 409)
        try:
            reply = await self.pubsub.request(MEDIA_CHANNEL + host, {"call_id": room_id, "member": member, "sdp": sdp},
                                              FORWARD_TIMEOUT_S)
        except TimeoutError:
            raise ApiError("media_timeout", "The server process holding this call's media did not answer",
                           504) from None
        if reply is None:
            raise ApiError("media_elsewhere", "The server process holding this call's media is gone", 409)
        if "error" in reply:
            raise ApiError(reply["error"]["code"], reply["error"]["message"], reply.get("status", 409))
        return str(reply["sdp"])

    async def _on_request(self, _channel: str, message: bytes) -> None:
        self.background.spawn(self._answer(json.loads(message)))

    async def _answer(self, request: dict[str, Any]) -> None:
        try:
            reply: dict[str, Any] = {"sdp": await self.connect(self.process_id, request["call_id"], request["member"],
                                                               request["sdp"])}
        except Exception as exc:  # told to the member through the process it is connected to
            err = as_api_error(exc, "forwarded media offer")
            reply = {**err.body(), "status": err.status}
        await self.pubsub.reply(request, reply)
