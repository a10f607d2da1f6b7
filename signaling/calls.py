"""The calls concern, assembled: the store of calls (every move a compare-and-swap), the ring and grace
timers, the signaling service, ringing the callee's devices (VoIP push included), relayed calls and their media
host, and recordings. ``server/app.py``
builds one ``Calls``, mounts ``signaling.api`` on it, and starts and stops it."""

from __future__ import annotations

from media.hosting import MediaHost
from server.core.config import Settings
from server.core.ports import Broadcaster, DevicePush, Notifier, Online, PushRegistrations
from server.infra.presence import Presence
from server.infra.pubsub import ControlBus, PubSub
from signaling.recording import CallRecordings
from signaling.relayed import MAX_MEMBERS, RelayedCalls
from signaling.ringing import Ringer
from signaling.service import CallService
from signaling.store import CallStore
from signaling.timers import CallTimers


class Calls:
    def __init__(self, settings: Settings, bus: ControlBus, pubsub: PubSub, presence: Presence, out: Broadcaster,
                 online: Online, notifier: Notifier, push: DevicePush | None = None,
                 registrations: PushRegistrations | None = None) -> None:
        self.settings = settings
        self.store = CallStore(bus, out)
        self.timers = CallTimers(settings, self.store)
        self.host = MediaHost(pubsub, presence.process_id, MAX_MEMBERS)
        self.relayed = RelayedCalls(self.store, self.host, bus, out)
        self.ringer = Ringer(settings, bus, online, push, registrations)
        self.service = CallService(settings, self.store, self.timers, self.relayed, bus, out, online, notifier,
                                   self.ringer)
        self.recordings = CallRecordings(settings, self.store, self.timers, self.relayed, bus, presence)

    async def start(self) -> None:
        await self.timers.start()
        await self.recordings.start()
        await self.host.start()

    async def stop(self) -> None:
        await self.host.stop()  # first: its rooms' recordings are stored on the way out
        await self.timers.stop()
        await self.recordings.stop()
        await self.ringer.stop()
