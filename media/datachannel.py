"""A device's WebRTC data channel to the server: messages in, replies out, one at a time.

The peer knows nothing of what the messages mean: ``handle(message)`` (given by the caller) turns
each into a reply, sent back on the same channel. Messages wait in a bounded queue; when it is full
the newest is dropped and counted, so a device sending faster than they are handled cannot grow
memory (it sees the missing replies, and the stream's sequence numbers show the gap).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription

from server.core.background import cancel_and_wait

log = logging.getLogger(__name__)
Message = str | bytes
Handler = Callable[[Message], Awaitable[Message | None]]
QUEUE_MESSAGES = 256


class DataChannelPeer:
    def __init__(self, handle: Handler, queue_size: int = QUEUE_MESSAGES) -> None:
        self.handle = handle
        self.pc = RTCPeerConnection()
        self.queue: asyncio.Queue[tuple[RTCDataChannel, Message]] = asyncio.Queue(queue_size)
        self.received = 0
        self.dropped = 0
        self._worker = asyncio.create_task(self._work())
        self.pc.on("datachannel", self._on_channel)

        @self.pc.on("connectionstatechange")
        async def _state() -> None:
            if self.pc.connectionState in ("failed", "closed"):
                await self.close()

    def _on_channel(self, channel: RTCDataChannel) -> None:
        @channel.on("message")
        def _message(message: Message) -> None:
            self.received += 1
            try:
                self.queue.put_nowait((channel, message))
            except asyncio.QueueFull:
                self.dropped += 1

    async def answer(self, offer_sdp: str) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        if not self.pc.sctp:
            raise ValueError("the offer has no data channel")
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp

    async def _work(self) -> None:
        while True:
            channel, message = await self.queue.get()
            try:
                reply = await self.handle(message)
            except Exception:
                log.exception("data channel message failed")
                continue
            if reply is not None and channel.readyState == "open":
                channel.send(reply)

    async def close(self) -> None:
        await cancel_and_wait(self._worker)  # (not when it is the caller)
        await self.pc.close()
