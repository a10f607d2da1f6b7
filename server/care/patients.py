"""A patient's profile as seen by their care team: the list of patients a user may see,
and one patient's profile (access-checked and audited)."""

from __future__ import annotations

from typing import Any

from beanie.operators import In

from server.care.access import patients_of, require_patient
from server.care.documents import PatientRef as PatientRef  # re-exported: signaling imports it from here
from server.care.documents import User
from server.core.errors import not_found
from server.core.identity import Client, Principal


async def list_patients(principal: Principal) -> list[dict[str, Any]]:
    ids = await patients_of(principal)
    users = await User.find(In(User.id, ids)).to_list()
    return [u.public() for u in users]


async def get_patient(principal: Principal, patient_id: str, client: Client) -> dict[str, Any]:
    pid = await require_patient(principal, patient_id, "patient.read", client)
    user = await User.get(pid)
    if user is None or user.role != "patient":
        raise not_found("patient")
    return user.public()
