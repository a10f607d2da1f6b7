"""The append-only audit log: recording, and the patient's read-only view of it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from beanie import PydanticObjectId

from server.care.documents import AuditEntry
from server.core.documents import iso
from server.infra.group_commit import COMMITS

if TYPE_CHECKING:
    from server.core.identity import Client, Principal


async def record(
    action: str, *, principal: Principal | None = None, user_id: PydanticObjectId | None = None,
    role: str | None = None, patient_id: PydanticObjectId | None = None, outcome: str = "ok",
    client: Client | None = None, urgent: bool = False, **details: Any,
) -> None:
    """Append one entry; awaited, so the action it records is not acknowledged before it is durable (``urgent``:
    written at once rather than with the next group commit)."""
    await COMMITS.insert_documents([AuditEntry(
        actor_id=principal.user_id if principal else user_id,
        actor_role=principal.role if principal else role,
        action=action, patient_id=patient_id, outcome=outcome,  # type: ignore[arg-type]
        client_addr=client.addr if client else None, details=details,
    )], urgent=urgent)


def entry_json(e: AuditEntry) -> dict[str, Any]:
    return {
        "id": str(e.id), "at": iso(e.at), "actor_id": str(e.actor_id) if e.actor_id else None,
        "actor_role": e.actor_role, "action": e.action,
        "patient_id": str(e.patient_id) if e.patient_id else None, "outcome": e.outcome,
        "client_addr": e.client_addr, "details": e.details,
    }


def concerning(user_id: PydanticObjectId) -> list[dict[str, Any]]:
    """What a user may page through: every access to their data as a patient, and all they did themselves (any
    of the two: ``cursor_page``)."""
    return [{"patient_id": user_id}, {"actor_id": user_id}]
