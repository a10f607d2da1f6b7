"""Reading alerts: one alert's lifecycle (raised, emitted, escalated, acknowledged, resolved, and which
device received it when), and which alerts a principal's list shows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from beanie import PydanticObjectId

from server.alerts.documents import Alert, AlertDelivery
from server.care.access import patients_of, require_patient
from server.care.documents import User
from server.core.documents import iso
from server.core.errors import not_found
from server.core.identity import Client, Principal, as_object_id


async def lifecycle(alert: Alert) -> dict[str, Any]:
    """Everything about an alert, including which device received it when."""
    deliveries = await AlertDelivery.find(AlertDelivery.alert_id == alert.id).sort(+AlertDelivery.received_at) \
        .limit(10_000).to_list()
    names = {u["_id"]: u.get("name") async for u in User.get_pymongo_collection().find(
        {"_id": {"$in": alert.recipient_ids}}, {"name": 1})}
    recipients = [{**r, "name": names.get(PydanticObjectId(r["user_id"]))} for r in alert.recipients]
    return {**alert.public(), "recipients": recipients, "deliveries": [
        {"user_id": str(d.user_id), "device_id": d.device_id, "received_at": iso(d.received_at)} for d in deliveries]}


async def get_alert(principal: Principal, alert_id: str, client: Client | None) -> dict[str, Any]:
    """For whoever may read the patient's data now (audited): having been a recipient is not enough once the
    link has ended."""
    alert = await Alert.get(as_object_id(alert_id, "alert_id"))
    if alert is None:
        raise not_found("alert")
    await require_patient(principal, alert.patient_id, "alerts.read", client, alert_id=alert_id)
    return await lifecycle(alert)


async def listed(principal: Principal, patient_id: str | None, status: str | None,
                 client: Client | None) -> tuple[dict[str, Any], Callable[[Alert], bool] | None]:
    """The query of a principal's alert list and what is kept of what it finds (None: all): one patient's (access
    checked), else a patient's own, else those the principal received about the patients whose care team they are
    on now. The store's filter is one an index ending with ``_id`` covers (``cursor_page`` reads a span of it);
    the rest is checked here: the patients (their ``$in`` in the filter made the store read every alert the
    principal ever received, for each page), a patient's alerts' status."""
    if patient_id is not None or principal.role == "patient":
        pid = principal.user_id if patient_id is None else await require_patient(principal, patient_id,
                                                                                   "alerts.read", client)
        return {"patient_id": pid}, None if status is None else (lambda alert: alert.status == status)
    patients = set(await patients_of(principal))
    return ({"recipient_ids": principal.user_id, **({"status": status} if status is not None else {})},
            lambda alert: alert.patient_id in patients)
