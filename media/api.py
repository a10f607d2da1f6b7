"""Socket.IO side of the device data-channel host: the offer event, and closing a device's peer with its socket."""

from __future__ import annotations

from typing import Any

from media.device_host import DeviceRtc, RtcOfferIn
from server.transport.events import DEVICE_ROLES, EventContext
from server.transport.mount import Mount


def mount(m: Mount, rtc: DeviceRtc) -> None:
    @m.events.event("stream:rtc-offer", RtcOfferIn, roles=DEVICE_ROLES)
    async def _offer(ctx: EventContext, body: RtcOfferIn) -> dict[str, Any]:
        return await rtc.offer(ctx, body.sdp)

    m.realtime.disconnect_hooks.append(rtc.close)
