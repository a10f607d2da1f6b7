"""Device presence: every device heartbeats (``device:heartbeat``, with its battery and firmware);
one silent for ``device_silence_s`` is marked disconnected, and its patient and the patient's
caregivers are told once (a ``device_disconnected`` notification and a live ``device:presence``).
The next heartbeat or connection clears it and says so (``device_reconnected``).

Every process sweeps for silent devices, but a device changes state only through a conditional
update in the store (``disconnected_at`` still unset / already set), so with several processes each
change is announced by exactly one of them.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Any

from beanie import PydanticObjectId

from devices.documents import Device
from server.care.access import care_team
from server.core.background import cancel_and_wait
from server.core.documents import iso, passed, utcnow
from server.core.i18n import Text
from server.core.identity import Principal
from server.core.ports import Broadcaster, Notifier

log = logging.getLogger(__name__)
SWEEP_BATCH = 500
KINDS = {"ecg": Text("device.kind.ecg"), "ppg": Text("device.kind.ppg"), "bp_cuff": Text("device.kind.bp_cuff"),
         "medicine_box": Text("device.kind.medicine_box")}


class DevicePresence:
    def __init__(self, broadcaster: Broadcaster, notifier: Notifier, silence_s: float) -> None:
        self.broadcaster = broadcaster
        self.notifier = notifier
        self.silence = timedelta(seconds=silence_s)
        self.sweep_every = max(0.1, min(5.0, silence_s / 4))
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._sweeping(), name="device-presence")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def on_connect(self, sid: str, principal: Principal) -> None:
        if principal.is_device:
            await self.seen(PydanticObjectId(principal.sid))

    async def heartbeat(self, principal: Principal, battery: float | None, firmware: str | None) -> dict[str, Any]:
        await self.seen(PydanticObjectId(principal.sid), battery, firmware)
        return {"device_id": principal.sid, "online": True, "heartbeat_s": round(self.silence.total_seconds() / 3, 3)}

    # --- state changes -------------------------------------------------------------------------------

    async def seen(self, device_id: PydanticObjectId, battery: float | None = None,
                   firmware: str | None = None) -> None:
        """Record a sign of life; if the device was marked disconnected, clear it and announce it."""
        now = utcnow()
        fields: dict[str, Any] = {"last_seen_at": now}
        if battery is not None:
            fields["battery"] = battery
        if firmware is not None:
            fields["firmware"] = firmware
        devices = Device.get_pymongo_collection()
        if (await devices.update_one({"_id": device_id, "disconnected_at": None}, {"$set": fields})).matched_count:
            return  # the usual case: it was online
        back = await devices.find_one_and_update(
            {"_id": device_id, "revoked_at": None, "disconnected_at": {"$ne": None}},
            {"$set": {**fields, "disconnected_at": None}})
        if back is None:  # another process cleared it in between (and announced it)
            await devices.update_one({"_id": device_id}, {"$set": fields})
            return
        device = Device.model_validate({**back, **fields, "disconnected_at": None})
        await self._announce(device, online=True, at=now, offline_since=back["disconnected_at"])

    async def sweep(self) -> int:
        """Mark every device silent for longer than the limit as disconnected; return how many this process did."""
        now = utcnow()
        cutoff = now - self.silence
        devices = Device.get_pymongo_collection()
        # On the presence index (not the never seen); a revoked device leaves the set unannounced.
        silent = {"disconnected_at": None, "last_seen_at": passed(cutoff)}
        marked = 0
        async for doc in devices.find(silent, limit=SWEEP_BATCH):
            won = await devices.find_one_and_update({"_id": doc["_id"], **silent}, {"$set": {"disconnected_at": now}})
            if won is None or won.get("revoked_at") is not None:
                continue  # another process got there first, or it just heartbeat; or revoked: told no one
            marked += 1
            await self._announce(Device.model_validate({**won, "disconnected_at": now}), online=False, at=now)
        return marked

    async def _sweeping(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_every)
            try:
                await self.sweep()
            except Exception as exc:
                log.warning("device presence sweep failed: %s", exc)

    # --- telling people ------------------------------------------------------------------------------

    async def _announce(self, device: Device, online: bool, at: datetime,
                        offline_since: datetime | None = None) -> None:
        pid = device.patient_id
        presence = {"device_id": str(device.id), "patient_id": str(pid), "online": online, "at": iso(at),
                    **{k: v for k, v in device.public().items() if k in ("kind", "serial", "model", "battery",
                                                                          "firmware", "last_seen_at")}}
        await self.broadcaster.to_patient(pid, "device:presence", presence)
        users = [pid, *[link.member_id for link in await care_team(pid, ("caregiver",))]]
        label, kind = f"{device.model} ({device.serial})", KINDS.get(device.kind, device.kind)
        data = {"device_id": str(device.id), "kind": device.kind, "serial": device.serial}
        if online:
            body = Text("device.reconnected.body", kind=kind) if offline_since is None else \
                Text("device.reconnected_after.body", kind=kind, duration=_duration(at - offline_since))
            await self.notifier.notify(users, "device_reconnected", Text("device.reconnected.title", device=label),
                                       body, patient_id=pid, data=data, urgency="low")
        else:
            body = Text("device.disconnected.body", kind=kind) if device.last_seen_at is None else \
                Text("device.disconnected_for.body", kind=kind, duration=_duration(at - device.last_seen_at))
            await self.notifier.notify(users, "device_disconnected", Text("device.disconnected.title", device=label),
                                       body, patient_id=pid, data=data, urgency="high")


def _duration(delta: timedelta) -> timedelta:
    """Never negative (clocks); the renderer writes it in the user's language (``2 min``, ``3 hr``)."""
    return max(delta, timedelta(0))
