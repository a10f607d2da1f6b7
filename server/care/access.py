"""The one access-control decision: may this principal read or write this patient's data?

A patient may reach their own data, and so may the patient's paired devices; a caregiver or
clinician may while an unrevoked care-team link joins them to the patient. Every patient-scoped
route and event goes through ``require_patient``, which also writes the audit entry for the access, granted or denied.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from typing import Any

from beanie import PydanticObjectId

from server.care import audit
from server.care.documents import Link
from server.core.errors import forbidden
from server.core.identity import Client, Principal, as_object_id
from server.infra.store import URGENT_LANE

CARE_ROLES = ("caregiver", "clinician")


async def linked(patient_id: PydanticObjectId, member_id: PydanticObjectId) -> bool:
    """Whether an unrevoked care-team link joins the member to the patient."""
    link = await Link.get(Link.key(patient_id, member_id))
    return link is not None and link.revoked_at is None


async def care_team(patient_id: PydanticObjectId, roles: Iterable[str] = CARE_ROLES, *, urgent: bool = False,
                    ) -> list[Link]:
    """The patient's unrevoked care-team links (``member_id``, ``member_role``), of members in ``roles``:
    who is told of, and may see, what happens to the patient. ``urgent`` (an alert's recipients): read on the
    urgent lane."""
    query = {"patient_id": patient_id, "revoked_at": None}  # all on patient_active; the roles are kept here
    roles = set(roles)
    links = await (URGENT_LANE.find(Link, query) if urgent else Link.find(query).to_list())
    return [link for link in links if link.member_role in roles]


async def memberships(member_id: PydanticObjectId) -> list[Link]:
    """The unrevoked care-team links of a caregiver or clinician: the patients they are on the team of."""
    return await Link.find(Link.member_id == member_id, Link.revoked_at == None).to_list()  # noqa: E711


async def may_access(principal: Principal, patient_id: PydanticObjectId) -> bool:
    if principal.user_id == patient_id:
        return principal.role in ("patient", "device")  # a device acts for its own patient only
    if principal.is_device:
        return False
    return await linked(patient_id, principal.user_id)


async def patients_of(principal: Principal) -> list[PydanticObjectId]:
    """The patients whose data (and live events) this principal may see now."""
    if principal.role == "patient":
        return [principal.user_id]
    if principal.is_device:
        return []
    return [link.patient_id for link in await memberships(principal.user_id)]


async def require_patient(principal: Principal, patient_id: Any, action: str, client: Client | None = None,
                          **details: Any) -> PydanticObjectId:
    """Return the patient's id if the principal may act on their data; refuse (and audit) otherwise.

    The refusal is the same whether the patient exists or not, so it tells nothing."""
    pid, audited = await admit_patient(principal, patient_id, action, client, **details)
    await audited
    return pid


async def admit_patient(principal: Principal, patient_id: Any, action: str, client: Client | None = None,
                        *, urgent: bool = False, **details: Any) -> tuple[PydanticObjectId, Awaitable[None]]:
    """``require_patient`` whose allowed access's audit entry is returned to be written alongside the action
    (the caller awaits it before the action is acknowledged: a reading in crisis stores it, its reading and
    its alert's lookups at once). ``urgent``: written at once, not queued for the next group commit."""
    pid = as_object_id(patient_id, "patient_id")
    allowed = await may_access(principal, pid)
    audited = audit.record(action, principal=principal, patient_id=pid, outcome="ok" if allowed else "denied",
                           client=client, urgent=urgent, **details)
    if not allowed:
        await audited
        raise forbidden()
    return pid, audited
