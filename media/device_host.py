"""Devices streaming over a WebRTC data channel instead of Socket.IO frames.

The device sends an SDP offer with a data channel (``stream:rtc-offer`` on its Socket.IO connection)
and gets the server's answer. On the channel, each message is a stream opening or a frame, handled
by the same ``StreamService`` as ``stream:open`` / ``stream:frame`` (so stored, shown live and
analysed the same way), acting as the device's principal; the reply to each comes back on the
channel in the shape of a Socket.IO ack. Each message runs through the same event pipeline as a
Socket.IO event (rate limits, role check, validation), as ``stream:open`` or ``stream:frame``. Messages:

- text: JSON ``{"op": "open", kind, sampling_rate, ...}`` or ``{"op": "frame", stream_id, seq, t0, samples: [..]}``
- binary: a JSON header line (``{"op": "frame", stream_id, seq, t0, dtype}``), ``\\n``, then the raw samples.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from server.core.errors import ApiError
from server.transport.events import EventContext, EventRouter

if TYPE_CHECKING:  # aiortc loads with the first data-channel device
    from media.datachannel import DataChannelPeer, Message

log = logging.getLogger(__name__)
MAX_PEERS = 200  # data-channel devices one process serves
MAX_MESSAGE = 64 * 1024


class RtcOfferIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sdp: str = Field(min_length=1, max_length=100_000)


class RtcAnswer(BaseModel):
    """The server's SDP answer: open the data channel and send stream messages on it."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["answer"]
    sdp: str


def parse(message: Message) -> tuple[str, dict[str, Any]]:
    if len(message) > MAX_MESSAGE:
        raise ApiError("too_large", f"A message is at most {MAX_MESSAGE} bytes", 413)
    try:
        if isinstance(message, bytes):
            header, _, raw = message.partition(b"\n")
            body = json.loads(header)
            if isinstance(body, dict):
                body["samples"] = raw
        else:
            body = json.loads(message)
    except (ValueError, UnicodeDecodeError):
        raise ApiError("invalid_message", "Not a JSON message (or JSON header line)", 422) from None
    if not isinstance(body, dict) or body.get("op") not in ("open", "frame"):
        raise ApiError("invalid_message", 'A message is {"op": "open" | "frame", ...}', 422)
    return body.pop("op"), body


OPS = {"open": "stream:open", "frame": "stream:frame"}


class DeviceRtc:
    def __init__(self, router: EventRouter) -> None:
        self.router = router
        self.peers: dict[str, DataChannelPeer] = {}  # device socket id -> its peer

    async def offer(self, ctx: EventContext, sdp: str) -> dict[str, Any]:
        await self.close(ctx.sid)
        if len(self.peers) >= MAX_PEERS:
            raise ApiError("unavailable", "This server takes no more data-channel devices; use stream:frame", 503)

        async def handle(message: Message) -> str:
            return json.dumps(await self.handle(ctx, message))

        from media.datachannel import DataChannelPeer

        peer = DataChannelPeer(handle)
        try:
            answer = await peer.answer(sdp)
        except Exception as exc:
            await peer.close()
            log.info("device %s offer refused: %s", ctx.principal.sid, exc)
            raise ApiError("invalid_sdp", "The SDP offer could not be used (it needs a data channel)", 422) from None
        self.peers[ctx.sid] = peer
        return {"type": "answer", "sdp": answer}

    async def handle(self, ctx: EventContext, message: Message) -> dict[str, Any]:
        """One data-channel message through the event pipeline; the reply as a Socket.IO ack would be."""
        try:
            op, body = parse(message)
        except ApiError as err:
            return {"op": "?", "ok": False, **err.body()}
        seq = body.get("seq")
        reply = await self.router.handle(OPS[op], ctx.principal, ctx.sid, ctx.client, body)
        return {"op": op, **({"seq": seq} if isinstance(seq, int) else {}), **reply}

    async def close(self, sid: str) -> None:
        peer = self.peers.pop(sid, None)
        if peer is not None:
            await peer.close()

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        for sid in list(self.peers):
            await self.close(sid)
