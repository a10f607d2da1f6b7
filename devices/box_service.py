"""The medicine box: a paired ``medicine_box`` device reports its drawers; at dose time the server
commands the right drawer's LED and buzzer (``box:command`` to the device's room, with an ack,
resent with backoff while unacknowledged, the schedule kept in the store so any process and a
restart carry it on); opening that drawer confirms the dose, closing it is recorded, and opening
another drawer while a dose waits is flagged to the patient.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

from beanie import PydanticObjectId
from beanie.operators import In

from devices.documents import BoxEvent, Device, MedicineBoxState
from devices.medicine_box import BoxCommand, BoxDrawers, BoxHello, DrawerEvent
from server.care.access import require_patient
from server.core.documents import by_ids, in_chunks, passed, update_each, utcnow
from server.core.errors import ApiError, forbidden
from server.core.gather import Gathered
from server.core.i18n import Text
from server.core.ports import Broadcaster, DoseSchedule, Notifier
from server.core.urgency import URGENCY
from server.transport.events import EventContext

log = logging.getLogger(__name__)
BACKOFF_S = (1, 2, 4, 8, 16, 30)  # wait before resending an unacknowledged command; then give up
ACK_WINDOW_S = 0.02
MAX_GRACE = timedelta(days=1)  # the longest dose grace window (HEALTHMATE_DOSE_GRACE_S): then missed


class DeviceCommands(Protocol):
    """Emits a command to a device, on whichever transport and in whichever process holds it."""

    async def command(self, device_id: Any, event: str, data: Any, on_ack: Callable[..., Awaitable[None]]) -> None:
        """``on_ack`` runs when the device acknowledges it (a late or missing acknowledgement is forgotten)."""


class MedicineBox:
    """The server side of medicine boxes: the schedule's hooks call ``on_due``, ``on_confirmed`` and ``resend``;
    the box's events come to ``hello``, ``drawers``, ``opened`` and ``closed``."""

    def __init__(self, commands: DeviceCommands, broadcaster: Broadcaster, notifier: Notifier,
                 scheduler: DoseSchedule) -> None:
        self.commands = commands
        self.broadcaster = broadcaster
        self.notifier = notifier
        self.scheduler = scheduler
        # Acknowledgements arriving within ACK_WINDOW_S are marked with one update (at 08:00 every box acks at once).
        self._acked: Gathered[Any, None] = Gathered(self._mark_acked, ACK_WINDOW_S)
        scheduler.on_due.append(self.on_due)
        scheduler.on_confirmed.append(self.on_confirmed)
        scheduler.ticks.append(self.resend)

    # --- commands -----------------------------------------------------------------------------------

    @staticmethod
    async def boxes(patient_id: PydanticObjectId) -> list[PydanticObjectId]:
        return (await MedicineBox.boxes_of([patient_id]))[patient_id]

    @staticmethod
    async def boxes_of(patient_ids: list[Any]) -> dict[Any, list[PydanticObjectId]]:
        """Each patient's boxes, in one query (a batch of due doses is one lookup, not one per patient)."""
        out: dict[Any, list[PydanticObjectId]] = {pid: [] for pid in patient_ids}
        for chunk in in_chunks(out):
            await URGENCY.give_way()  # (a batch's lookups are bulk work: an alert's go first)
            found = Device.find(In(Device.patient_id, chunk), Device.kind == "medicine_box",
                                Device.revoked_at == None)  # noqa: E711
            async for d in found:
                if d.id is not None:
                    out[d.patient_id].append(d.id)
        return out

    async def command(self, device_id: PydanticObjectId, cmd: BoxCommand, dose_id: Any = None) -> None:
        """Emit to the box's room; its ack (from whichever process holds its socket) is stored on the dose."""

        async def acked(*reply: Any) -> None:
            if dose_id is not None:
                await self._acked([dose_id])

        await self.commands.command(device_id, "box:command", cmd.model_dump(), acked)

    async def _mark_acked(self, dose_ids: set[Any]) -> None:
        """The doses' commands were acknowledged: no more resends."""
        await update_each(self.scheduler.doses, by_ids(sorted(dose_ids), {"box_acked_at": None}),
                          {"$set": {"box_acked_at": utcnow(), "box_next_at": None}})

    @staticmethod
    def _remind(d: dict[str, Any], attempt: int) -> BoxCommand:
        return BoxCommand(command_id=uuid.uuid4().hex, action="remind", drawer=d["drawer"], led="on", buzzer=True,
                          dose_id=str(d["_id"]), attempt=attempt)

    async def on_due(self, doses: list[dict[str, Any]]) -> None:
        """The scheduler reminded these doses: light each one's drawer on the patient's boxes. Once per dose:
        a dose pushed again (its first push's process died) that was already commanded is left to ``resend``."""
        doses = [d for d in doses if d.get("drawer") and not d.get("box_attempts")]
        if not doses:
            return
        boxes = await self.boxes_of(list({d["patient_id"] for d in doses}))
        sends = [(device_id, d) for d in doses for device_id in boxes[d["patient_id"]]]
        if not sends:
            return
        wait = utcnow() + timedelta(seconds=BACKOFF_S[0])
        await update_each(self.scheduler.doses, by_ids(sorted({d["_id"] for _, d in sends}),
                                                       {"box_attempts": {"$in": [0, None]}}),
                          {"$set": {"box_attempts": 1, "box_next_at": wait}})
        for device_id, d in sends:
            await URGENCY.give_way()  # an alert being raised goes first
            await self.command(device_id, self._remind(d, 1), d["_id"])

    async def resend(self, now: datetime) -> None:
        """Unacknowledged commands whose wait ran out: resend (claimed, so by one process), or give up."""
        token, claimed = await self.scheduler.claim(
            {"state": "reminded", "box_next_at": passed(now, inclusive=True)},
            {"$set": {"box_next_at": now + timedelta(seconds=BACKOFF_S[-1])}, "$inc": {"box_attempts": 1}},
            owner="box_owner")
        doses = self.scheduler.doses
        for attempt in sorted({d["box_attempts"] for d in claimed}):
            if attempt <= len(BACKOFF_S):
                wait: dict[str, Any] = {"$set": {"box_next_at": now + timedelta(seconds=BACKOFF_S[attempt - 1])}}
            else:
                wait = {"$set": {"box_next_at": None}, "$inc": {"box_attempts": -1}}
                log.warning("giving up on %d unacknowledged box commands",
                            sum(d["box_attempts"] == attempt for d in claimed))
            await update_each(doses, by_ids((d["_id"] for d in claimed if d["box_attempts"] == attempt),
                                            {"box_owner": token, "box_attempts": attempt}), wait)
        await self.scheduler.release("box_owner", token, claimed, {})
        resent = [d for d in claimed if d["box_attempts"] <= len(BACKOFF_S)]
        boxes = await self.boxes_of(list({d["patient_id"] for d in resent})) if resent else {}
        for d in resent:
            for device_id in boxes[d["patient_id"]]:
                await URGENCY.give_way()
                await self.command(device_id, self._remind(d, d["box_attempts"]), d["_id"])

    async def on_confirmed(self, d: dict[str, Any]) -> None:
        if not d.get("drawer"):
            return
        for device_id in await self.boxes(d["patient_id"]):
            await self.command(device_id, BoxCommand(command_id=uuid.uuid4().hex, action="clear", drawer=d["drawer"],
                                                     led="off", buzzer=False, dose_id=str(d["_id"])))

    # --- what the box reports -----------------------------------------------------------------------

    async def _box(self, ctx: EventContext, action: str, **details: Any) -> tuple[PydanticObjectId, PydanticObjectId]:
        """The sending box's id and its patient (audited); only a paired medicine box may send box events."""
        device = await Device.get(PydanticObjectId(ctx.principal.sid))
        if device is None or device.kind != "medicine_box":
            raise forbidden("Only a medicine box sends box events")
        pid = await require_patient(ctx.principal, ctx.principal.user_id, action, ctx.client,
                                    device_id=ctx.principal.sid, **details)
        assert device.id is not None
        return device.id, pid

    async def _store_drawers(self, device_id: PydanticObjectId, pid: PydanticObjectId, body: BoxDrawers,
                             **extra: Any) -> dict[str, Any]:
        drawers = [d.model_dump() for d in body.drawers]
        await MedicineBoxState.get_pymongo_collection().update_one(
            {"_id": device_id}, {"$set": {"patient_id": pid, "drawers": drawers, "hello_at": utcnow(), **extra},
                                 "$setOnInsert": {"schema_version": 1}}, upsert=True)
        return {"device_id": str(device_id), "drawers": drawers, "assigned": await self.scheduler.drawers(pid)}

    async def hello(self, ctx: EventContext, body: BoxHello) -> dict[str, Any]:
        """(a paired medicine box, on every connect) Its drawers, firmware and battery. The reply lists the patient's
        medications assigned to drawers; commands for doses still waiting are resent at once. Errors `forbidden`
        (not a medicine box), `invalid_payload`."""
        device_id, pid = await self._box(ctx, "box.hello")
        extra = {k: v for k, v in (("firmware", body.firmware), ("battery", body.battery)) if v is not None}
        if extra:
            await Device.get_pymongo_collection().update_one({"_id": device_id}, {"$set": extra})
        state = await self._store_drawers(device_id, pid, body, **extra)
        # A box (re)connecting gets the commands for doses still waiting at once.
        now = utcnow()
        recent = self.scheduler.doses.find(self._recent(pid), {"state": 1, "drawer": 1, "box_acked_at": 1})
        waiting = [d["_id"] async for d in recent
                   if d["state"] == "reminded" and d.get("drawer") is not None and d.get("box_acked_at") is None]
        if await update_each(self.scheduler.doses, by_ids(waiting, {"state": "reminded", "box_acked_at": None}),
                             {"$set": {"box_next_at": now}}):
            self.scheduler.wake()
        return state

    async def drawers(self, ctx: EventContext, body: BoxDrawers) -> dict[str, Any]:
        """(medicine box) Its drawers changed."""
        device_id, pid = await self._box(ctx, "box.drawers")
        return await self._store_drawers(device_id, pid, body)

    async def _check_drawer(self, device_id: PydanticObjectId, drawer: int) -> None:
        state = await MedicineBoxState.get(device_id)
        if state is not None and drawer not in {d["index"] for d in state.drawers}:
            raise ApiError("invalid_drawer", f"This box has no drawer {drawer}", 422, {"drawer": drawer})

    @staticmethod
    def _recent(pid: PydanticObjectId) -> dict[str, Any]:
        """The patient's doses that may still wait (reminded): due since the longest grace window, on patient_due
        (by ``patient_id`` and ``state``, the embedded store would read every dose of the patient's past)."""
        return {"patient_id": pid, "due_at": {"$gte": utcnow() - MAX_GRACE}}

    async def opened(self, ctx: EventContext, body: DrawerEvent) -> dict[str, Any]:
        """(medicine box) A drawer was opened. It confirms the reminded doses kept in that drawer (`dose:confirmed`,
        `confirmed_via: box`); opening another drawer while a dose waits is flagged to the patient
        (`box:wrong-drawer` and a `wrong_drawer` notification). Recorded. Error `invalid_drawer` for a drawer the
        box did not report."""
        device_id, pid = await self._box(ctx, "box.drawer_opened", drawer=body.drawer)
        await self._check_drawer(device_id, body.drawer)
        waiting = [d for d in await self.scheduler.doses.find(self._recent(pid)).to_list(None)
                   if d["state"] == "reminded"]
        confirmed = []
        for d in waiting:
            if d.get("drawer") == body.drawer and await self.scheduler.confirm(d["_id"], pid, "box", None):
                confirmed.append(str(d["_id"]))
        expected = sorted({d["drawer"] for d in waiting if d.get("drawer")})
        wrong = not confirmed and bool(expected)
        await BoxEvent(device_id=device_id, patient_id=pid, kind="opened", drawer=body.drawer,
                       device_at_ms=body.at_ms, confirmed=confirmed, wrong_drawer=wrong).insert()
        if wrong:
            flag = {"patient_id": str(pid), "device_id": str(device_id), "drawer": body.drawer, "expected": expected,
                    "dose_ids": [str(d["_id"]) for d in waiting if d.get("drawer") in expected]}
            await self.broadcaster.to_patient(pid, "box:wrong-drawer", flag)
            try:  # a failure to notify never undoes what the box reported
                await self.notifier.notify([pid], "wrong_drawer", Text("box.wrong_drawer.title", drawer=body.drawer),
                                           Text("box.wrong_drawer.body", drawers=expected), patient_id=pid,
                                           data=flag, urgency="high")
            except Exception:
                log.exception("could not notify the wrong drawer")
        return {"confirmed": confirmed, "wrong_drawer": wrong, "expected": expected}

    async def closed(self, ctx: EventContext, body: DrawerEvent) -> dict[str, Any]:
        """(medicine box) A drawer was closed; recorded."""
        device_id, pid = await self._box(ctx, "box.drawer_closed", drawer=body.drawer)
        await self._check_drawer(device_id, body.drawer)
        await BoxEvent(device_id=device_id, patient_id=pid, kind="closed", drawer=body.drawer,
                       device_at_ms=body.at_ms).insert()
        return {"recorded": True}
