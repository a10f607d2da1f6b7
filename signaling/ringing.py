"""Ringing the callee's devices, asleep ones included.

``call:incoming`` goes to every connected socket of the callee, in whichever process holds it (the control bus
carries it), each emitted with a Socket.IO ack request; an acknowledgement comes back over the bus to the process
that placed the call. A registered device of the callee (``PushRegistrations``) with no connected socket is rung
at once by VoIP push (``DevicePush.ring``: APNs PushKit, FCM high-priority data); one that has not acknowledged
``call:incoming`` within ``call_push_after_s`` (a socket the OS froze but has not closed) is rung then. Answering on
any device, declining, the caller cancelling or hanging up, the ring timing out (``missed``) or the link ending sends
the cancelling push (``DevicePush.cancel_ring``, which reaches every device rung; nothing if none was).

The delayed ring is a timer in the process that placed the call, not a watch in the store: while a call rings its
caller's socket is in that process, and should the process die the call ends with it (``cancelled``, by another
process's sweep of orphaned calls, whose end sends the cancelling push), so no ring would be due anyway. The timer
reads the call when it fires, so a call answered or ended in another process meanwhile is not rung; a ring that
crosses the call's end is followed by its cancellation."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from server.core.background import Background
from server.core.config import Settings
from server.core.ports import DevicePush, Online, PushRegistrations
from server.infra.pubsub import ControlBus
from signaling.call_state import CallState
from signaling.documents import CallSession, call_json

log = logging.getLogger(__name__)


class CalleeSockets(Protocol):
    """This process's sockets, as the Socket.IO adapter knows them (``signaling.api`` hands it over)."""

    def user_sids(self, user_id: Any) -> list[str]: ...

    def device_id(self, sid: str) -> str | None: ...

    async def to_socket(self, sid: str, event: str, data: Any, callback: Any = None) -> None:
        """Emit to that socket of this process; ``callback()`` runs when the client acknowledges it."""


class Ringer:
    def __init__(self, settings: Settings, bus: ControlBus, online: Online, push: DevicePush | None,
                 registrations: PushRegistrations | None) -> None:
        self.after_s = settings.call_push_after_s
        self.bus = bus
        self.online = online
        self.push = push
        self.registrations = registrations
        self.sockets: CalleeSockets | None = None
        self.acked: dict[str, set[str]] = {}  # call placed here and still ringing -> devices that acknowledged it
        self.background = Background()
        bus.on("call_ring", self._apply)
        bus.on("call_acked", self._acked)

    def attach(self, sockets: CalleeSockets) -> None:
        self.sockets = sockets

    async def stop(self) -> None:
        await self.background.stop()

    async def start(self, call: CallSession) -> None:
        """``call:incoming`` to each socket of the callee, and the VoIP rings (in the background)."""
        call_id = str(call.id)
        self.acked[call_id] = set()
        data = call_json(call)
        await self.bus.publish("call_ring", user=str(call.callee_id), call=data)
        if self.push is None or self.registrations is None:
            self.acked.pop(call_id, None)
            return
        self.background.spawn(self._ring_devices(call, data), name=f"ring-{call_id}")

    async def to_socket(self, sid: str, call: CallSession) -> None:
        """``call:incoming`` to one socket of this process (a callee's device connecting while it rings)."""
        if self.sockets is not None:
            await self.sockets.to_socket(sid, "call:incoming", call_json(call), self._on_ack(str(call.id), sid))

    def stop_ringing(self, call: CallSession, reason: str) -> None:
        """The call was answered or ended: the cancelling push, to whichever devices were rung."""
        if self.push is not None:
            self.background.spawn(self._cancel(call, reason))

    # --- call:incoming and its acknowledgements -------------------------------------------------------------

    async def _apply(self, msg: dict[str, Any]) -> None:
        if self.sockets is None:
            return
        for sid in self.sockets.user_sids(msg["user"]):
            await self.sockets.to_socket(sid, "call:incoming", msg["call"], self._on_ack(msg["call"]["id"], sid))

    def _on_ack(self, call_id: str, sid: str) -> Any:
        device = self.sockets.device_id(sid) if self.sockets is not None else None

        async def acknowledged(*_: Any) -> None:
            if device is not None:
                await self.bus.publish("call_acked", call_id=call_id, device=device)

        return acknowledged

    async def _acked(self, msg: dict[str, Any]) -> None:
        if msg["call_id"] in self.acked:
            self.acked[msg["call_id"]].add(msg["device"])

    # --- VoIP pushes -------------------------------------------------------------------------------------------

    async def _ring_devices(self, call: CallSession, data: dict[str, Any]) -> None:
        """At once the registered devices with no socket; after ``after_s`` those that did not acknowledge."""
        assert self.registrations is not None
        call_id = str(call.id)
        try:
            devices = await self.registrations.registered_devices(call.callee_id)
            live = await self.online.live_devices(call.callee_id)
            rung = devices - live if live is not None else set()  # unknown: those that do not acknowledge, later
            if rung:
                await self._ring(call, data, rung)
            await asyncio.sleep(self.after_s)
            late = await self.registrations.registered_devices(call.callee_id) - self.acked.get(call_id, set()) - rung
            if late and await _outcome(call) is None:
                await self._ring(call, data, late)
        except Exception:
            log.exception("ringing the devices of %s for call %s failed", call.callee_id, call_id)
        finally:
            self.acked.pop(call_id, None)

    async def _ring(self, call: CallSession, data: dict[str, Any], devices: set[str]) -> None:
        assert self.push is not None
        await self.push.ring(call.callee_id, data, sorted(devices))
        reason = await _outcome(call)
        if reason is not None:  # answered or ended meanwhile: its cancellation may have gone before this ring
            await self.push.cancel_ring(call.callee_id, str(call.id), reason)

    async def _cancel(self, call: CallSession, reason: str) -> None:
        assert self.push is not None
        try:
            await self.push.cancel_ring(call.callee_id, str(call.id), reason)
        except Exception:
            log.exception("cancelling the ring of call %s failed", call.id)


async def _outcome(call: CallSession) -> str | None:
    """None while the call still rings; else why it stopped (``answered_elsewhere``, or its end reason)."""
    doc = await CallSession.get_pymongo_collection().find_one({"_id": call.id}, {"state": 1, "end_reason": 1})
    if doc is None:
        return "cancelled"
    if doc["state"] == CallState.RINGING:
        return None
    return "answered_elsewhere" if doc["state"] != CallState.ENDED else str(doc.get("end_reason") or "cancelled")
