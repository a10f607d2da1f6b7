"""Socket.IO side of the device data-channel host: the offer event, and closing a device's peer with its socket."""

from __future__ import annotations

from typing import Any

from media.device_host import DeviceRtc, RtcAnswer, RtcOfferIn
from server.transport.events import DEVICE_ROLES, EventContext
from server.transport.mount import Mount


def mount(m: Mount, rtc: DeviceRtc) -> None:
    @m.events.event("stream:rtc-offer", RtcOfferIn, roles=DEVICE_ROLES, reply=RtcAnswer)
    async def _offer(ctx: EventContext, body: RtcOfferIn) -> dict[str, Any]:
        """(device) Stream over a WebRTC data channel instead of `stream:frame`: send an SDP offer with a data
        channel, get the server's answer. Each message on the channel is a stream opening or a frame, handled
        exactly as `stream:open` / `stream:frame`, and answered on the channel with the same ack shape plus `op`
        (and `seq`): text JSON `{"op": "open", kind, sampling_rate, units?, channel?}` or `{"op": "frame",
        stream_id, seq, t0, samples: [numbers]}`; or binary: a JSON header line `{"op": "frame", stream_id, seq,
        t0, dtype}`, a newline, then the raw little-endian samples. At most 64 KiB a message. The peer closes with
        the device's socket. Errors: `invalid_sdp`, `unavailable` (this process serves its maximum of data- channel
        devices)."""
        return await rtc.offer(ctx, body.sdp)

    m.realtime.disconnect_hooks.append(rtc.close)
