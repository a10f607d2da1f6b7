"""What recipients do with an alert: confirm that a device has it (``alert:received``, stored per device,
written in batches), acknowledge it (the first acknowledgement wins and is shown to all recipients), resolve
it. A recipient whose link to the patient has ended may do none of these. The patient's own devices are told
too (``alert:acknowledged``, ``alert:resolved``): they show who is handling it."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

from beanie import PydanticObjectId

from server.alerts.documents import Alert, AlertDelivery, AlertRecipients
from server.alerts.fanout import Fanout
from server.care.access import may_access
from server.care.documents import User
from server.core.documents import utcnow
from server.core.errors import ApiError, not_found
from server.core.identity import Principal, as_object_id
from server.infra.group_commit import COMMITS

RECIPIENT_CACHE = 256  # alerts whose recipients are kept in memory for receipts
Recipients = frozenset[PydanticObjectId]


class Receipts:
    """``alert:received``, stored through the group commit (``server.infra.group_commit``, always on: the
    receipts of a thousand recipients arrive together); each sender's ack waits until its receipt is stored. A
    device's second receipt for the same alert is a duplicate key, ignored."""

    async def record(self, alert_id: PydanticObjectId, user_id: PydanticObjectId, device_id: str) -> None:
        doc = AlertDelivery(id=AlertDelivery.key(alert_id, user_id, device_id), alert_id=alert_id, user_id=user_id,
                            device_id=device_id, received_at=utcnow())
        await COMMITS.insert(AlertDelivery.get_pymongo_collection(), [doc.model_dump(by_alias=True)],
                             ignore_duplicates=True, always=True)


class Acknowledgements:
    def __init__(self, fanout: Fanout) -> None:
        self.fanout = fanout
        self.receipts = Receipts()
        self._recipient_cache: OrderedDict[PydanticObjectId, asyncio.Future[Recipients]] = OrderedDict()

    async def received(self, principal: Principal, alert_id: str, device: str) -> dict[str, Any]:
        """This device has the alert."""
        oid = as_object_id(alert_id, "alert_id")
        if principal.user_id not in await self._recipients(oid):
            raise not_found("alert")
        await self.receipts.record(oid, principal.user_id, device)
        return {"alert_id": str(oid), "device_id": device}

    async def ack(self, principal: Principal, alert_id: str, note: str | None, device: str) -> dict[str, Any]:
        """The first acknowledgement wins; every recipient is told who is handling it."""
        alert = await self._recipient_alert(principal, alert_id)
        who = await self._who(principal)
        won = await Alert.get_pymongo_collection().update_one(
            {"_id": alert.id, "status": "open"},
            {"$set": {"status": "acknowledged", "acknowledged_at": utcnow(), "acknowledged_by": {**who, "note": note},
                      "escalate_at": None}})
        await self.receipts.record(alert.id, principal.user_id, device)  # type: ignore[arg-type]
        alert = await Alert.get(alert.id)
        assert alert is not None
        if won.modified_count:
            await self._tell(alert, "alert:acknowledged", {
                "alert_id": str(alert.id), "patient_id": str(alert.patient_id),
                "by": alert.push()["acknowledged_by"], "message": f"{who['name']} is handling it"})
        return {**alert.push(), "acknowledged_by_you": won.modified_count == 1}

    async def resolve(self, principal: Principal, alert_id: str, note: str | None) -> dict[str, Any]:
        alert = await self._recipient_alert(principal, alert_id)
        who = await self._who(principal)
        res = await Alert.get_pymongo_collection().update_one(
            {"_id": alert.id, "status": {"$ne": "resolved"}},
            {"$set": {"status": "resolved", "resolved_at": utcnow(), "resolved_by": who,
                      "resolution_note": note, "escalate_at": None}})
        if not res.modified_count:
            raise ApiError("already_resolved", "This alert is already resolved", 409)
        alert = await Alert.get(alert.id)
        assert alert is not None
        await self._tell(alert, "alert:resolved", {"alert_id": str(alert.id), "patient_id": str(alert.patient_id),
                                                   "by": alert.public()["resolved_by"], "note": note})
        return alert.public()

    async def _tell(self, alert: Alert, event: str, data: dict[str, Any]) -> None:
        """To every recipient still on the care team, and to the patient's own devices."""
        await self.fanout.push(event, data, alert, alert.recipient_ids, key=str(alert.id))
        await self.fanout.out.to_user(alert.patient_id, event, data)

    async def _recipient_alert(self, principal: Principal, alert_id: str) -> Alert:
        alert = await Alert.get(as_object_id(alert_id, "alert_id"))
        if alert is None or principal.user_id not in alert.recipient_ids \
                or not await may_access(principal, alert.patient_id):  # the link may have ended since
            raise not_found("alert")
        return alert

    async def _recipients(self, alert_id: PydanticObjectId) -> Recipients:
        """An alert's recipients, cached (bounded): a thousand receipts must not be a thousand queries. The
        lookup itself is shared: the receipts that arrive together (all of them, within milliseconds of the
        push) wait for the one query rather than each missing the cache and sending its own."""
        lookup = self._recipient_cache.get(alert_id)
        if lookup is None:
            lookup = asyncio.ensure_future(self._load_recipients(alert_id))
            self._recipient_cache[alert_id] = lookup
            if len(self._recipient_cache) > RECIPIENT_CACHE:
                self._recipient_cache.popitem(last=False)
        try:
            return await asyncio.shield(lookup)
        except Exception:
            if self._recipient_cache.get(alert_id) is lookup:  # not cached: the next receipt asks again
                del self._recipient_cache[alert_id]
            raise

    @staticmethod
    async def _load_recipients(alert_id: PydanticObjectId) -> Recipients:
        alert = await Alert.find_one(Alert.id == alert_id, projection_model=AlertRecipients)
        return frozenset(alert.recipient_ids) if alert else frozenset()

    @staticmethod
    async def _who(principal: Principal) -> dict[str, Any]:
        user = await User.get(principal.user_id)
        return {"user_id": principal.id, "role": principal.role, "name": user.name if user else principal.name}
