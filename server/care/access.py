"""The one access-control decision: may this principal read or write this patient's data?

A patient may reach their own data, and so may the patient's paired devices; a caregiver or
clinician may while an unrevoked care-team link joins them to the patient. Every patient-scoped
route and event goes through ``require_patient``, which also writes the audit entry for the access, granted or denied.
"""

from __future__ import annotations

from typing import Any

from beanie import PydanticObjectId

from server.care import audit
from server.care.documents import Link
from server.core.errors import forbidden
from server.core.identity import Client, Principal, as_object_id


async def may_access(principal: Principal, patient_id: PydanticObjectId) -> bool:
    if principal.user_id == patient_id:
        return principal.role in ("patient", "device")  # a device acts for its own patient only
    if principal.is_device:
        return False
    link = await Link.get(Link.key(patient_id, principal.user_id))
    return link is not None and link.revoked_at is None


async def patients_of(principal: Principal) -> list[PydanticObjectId]:
    """The patients whose data (and live events) this principal may see now."""
    if principal.role == "patient":
        return [principal.user_id]
    if principal.is_device:
        return []
    links = Link.find(Link.member_id == principal.user_id, Link.revoked_at == None)  # noqa: E711
    return [link.patient_id async for link in links]


async def require_patient(principal: Principal, patient_id: Any, action: str, client: Client | None = None,
                          **details: Any) -> PydanticObjectId:
    """Return the patient's id if the principal may act on their data; refuse (and audit) otherwise.

    The refusal is the same whether the patient exists or not, so it tells nothing."""
    pid = as_object_id(patient_id, "patient_id")
    allowed = await may_access(principal, pid)
    await audit.record(action, principal=principal, patient_id=pid, outcome="ok" if allowed else "denied",
                       client=client, **details)
    if not allowed:
        raise forbidden()
    return pid
