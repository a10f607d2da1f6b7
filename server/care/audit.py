"""The append-only audit log: recording, and the patient's read-only view of it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web
from beanie import PydanticObjectId
from beanie.operators import Or

from server.care.documents import AuditEntry
from server.core.documents import iso
from server.transport.http import cursor_page, page_params, require_principal

if TYPE_CHECKING:
    from server.core.identity import Client, Principal


async def record(
    action: str, *, principal: Principal | None = None, user_id: PydanticObjectId | None = None,
    role: str | None = None, patient_id: PydanticObjectId | None = None, outcome: str = "ok",
    client: Client | None = None, **details: Any,
) -> None:
    """Append one entry; awaited, so the action it records is not acknowledged before it is durable."""
    await AuditEntry(
        actor_id=principal.user_id if principal else user_id,
        actor_role=principal.role if principal else role,
        action=action, patient_id=patient_id, outcome=outcome,  # type: ignore[arg-type]
        client_addr=client.addr if client else None, details=details,
    ).insert()


def entry_json(e: AuditEntry) -> dict[str, Any]:
    return {
        "id": str(e.id), "at": iso(e.at), "actor_id": str(e.actor_id) if e.actor_id else None,
        "actor_role": e.actor_role, "action": e.action,
        "patient_id": str(e.patient_id) if e.patient_id else None, "outcome": e.outcome,
        "client_addr": e.client_addr, "details": e.details,
    }


async def list_audit(request: web.Request) -> web.Response:
    """A user pages through every access to their data as a patient and everything they did themselves."""
    principal = await require_principal(request)
    before, limit = page_params(request)
    mine = Or(AuditEntry.patient_id == principal.user_id, AuditEntry.actor_id == principal.user_id)
    page = await cursor_page(AuditEntry, mine, before, limit, entry_json)
    return web.json_response(page)


def setup(app: web.Application) -> None:
    app.router.add_get("/api/audit", list_audit)
