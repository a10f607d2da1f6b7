"""One table over every patient-scoped route and event: an unlinked user gets a refusal, not data;
a linked one gets data. The table must name every route with ``{patient_id}`` and every event whose
payload has a ``patient_id``, so a new one cannot be left out."""

from __future__ import annotations

from typing import Any

from server.app import SERVER
from server.care.documents import AuditEntry
from server.core.documents import utcnow
from server.meds.documents import DoseEvent
from server.streaming.history import Stream
from tests.helpers import Api, Sock, User

# (method, path) with {patient_id} to fill in; the body, if any.
ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/api/patients/{patient_id}", None),
    ("GET", "/api/patients/{patient_id}/devices", None),
    ("POST", "/api/patients/{patient_id}/devices", {"kind": "ppg", "serial": "PPG-7", "model": "Ring"}),
    ("DELETE", "/api/patients/{patient_id}/devices/{device_id}", None),
    ("GET", "/api/patients/{patient_id}/medications", None),
    ("GET", "/api/patients/{patient_id}/medications/history", None),
    ("GET", "/api/patients/{patient_id}/doses", None),
    ("GET", "/api/patients/{patient_id}/adherence", None),
    ("GET", "/api/patients/{patient_id}/bp", None),
    ("GET", "/api/patients/{patient_id}/bp/stats", None),
    ("GET", "/api/patients/{patient_id}/bp/fhir", None),
    ("GET", "/api/patients/{patient_id}/contacts", None),
    ("POST", "/api/patients/{patient_id}/contacts", {"kind": "pharmacy", "name": "Farmacia", "phone": "+34911111111"}),
    ("PATCH", "/api/patients/{patient_id}/contacts/{contact_id}", {"notes": "open late"}),
    ("DELETE", "/api/patients/{patient_id}/contacts/{contact_id}", None),
    ("GET", "/api/patients/{patient_id}/alerts", None),
    ("GET", "/api/patients/{patient_id}/streams", None),
    ("GET", "/api/patients/{patient_id}/streams/{stream_id}/waveform", None),
    ("GET", "/api/patients/{patient_id}/analyses", None),
    ("GET", "/api/patients/{patient_id}/vital-events", None),
]
# (event, payload) with "{patient_id}" to fill in.
EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("patient:get", {"patient_id": "{patient_id}"}),
    ("med:list", {"patient_id": "{patient_id}"}),
    ("med:create", {"patient_id": "{patient_id}", "name": "Aspirin", "schedule": {"times": ["08:00"]}}),
    ("med:update", {"patient_id": "{patient_id}", "medication_id": "{medication_id}", "dose": "2"}),
    ("med:archive", {"patient_id": "{patient_id}", "medication_id": "{medication_id}"}),
    ("dose:confirm", {"patient_id": "{patient_id}", "dose_id": "{dose_id}"}),
    ("bp:add", {"patient_id": "{patient_id}", "systolic": 120, "diastolic": 70, "measured_at": "2026-01-01T08:00:00Z"}),
    ("bp:list", {"patient_id": "{patient_id}"}),
    ("bp:stats", {"patient_id": "{patient_id}", "window": "month"}),
    ("contacts:list", {"patient_id": "{patient_id}"}),
    ("contact:add", {"patient_id": "{patient_id}", "kind": "doctor", "name": "Dr. X", "email": "x@example.org"}),
    ("alerts:list", {"patient_id": "{patient_id}"}),
    ("live:subscribe", {"patient_id": "{patient_id}"}),
    ("live:unsubscribe", {"patient_id": "{patient_id}"}),
    ("vitals:get-thresholds", {"patient_id": "{patient_id}"}),
    ("vitals:set-thresholds", {"patient_id": "{patient_id}", "stalled_s": 10}),
    ("ml:bp-forecast", {"patient_id": "{patient_id}"}),
    ("ml:triage", {"patient_id": "{patient_id}", "symptoms": ["cough"]}),
    ("calls:ongoing", {"patient_id": "{patient_id}"}),
]


def _fill(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, real in ids.items():
            value = value.replace("{" + key + "}", real)
        return value
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    return value


def test_table_names_every_patient_scoped_route_and_event(api: Api) -> None:
    assert api.app is not None
    served = {(r.method, r.resource.canonical) for r in api.app.router.routes()
              if r.resource is not None and "{patient_id}" in r.resource.canonical and r.method != "HEAD"}
    assert served == {(m, p) for m, p, _ in ROUTES}
    events = api.app[SERVER].realtime.router.events
    scoped = {name for name, e in events.items() if e.model is not None and "patient_id" in e.model.model_fields}
    assert scoped == {name for name, _ in EVENTS}


async def patient_data(api: Api, patient: User, member: Sock) -> dict[str, str]:
    """One of each thing the tables name by id, for ``patient``: a device, an emergency contact, a stream, a
    medication (created by ``member``, a linked user's socket) and a due dose; their ids by table name."""
    status, device = await api.request("POST", f"/api/patients/{patient.id}/devices", patient,
                                       json={"kind": "ecg", "serial": "E-1", "model": "Patch"})
    assert status == 201
    status, contact = await api.request("POST", f"/api/patients/{patient.id}/contacts", patient,
                                        json={"kind": "emergency", "name": "Maria", "phone": "+442079460958"})
    assert status == 201
    stream = Stream(patient_id=patient.id, device_id=device["device"]["id"], kind="ecg", sampling_rate=250,
                    units="mV", channel="lead-I")
    await stream.insert()
    ids = {"patient_id": patient.id, "device_id": device["device"]["id"], "contact_id": contact["id"],
           "stream_id": str(stream.id)}
    ids["medication_id"] = (await member.ok("med:create", {"patient_id": patient.id, "name": "Statin",
                                                            "schedule": {"as_needed": True}}))["id"]
    ids["dose_id"] = str((await DoseEvent(patient_id=patient.id, medication_id=ids["medication_id"], slot="now",
                                          timezone="UTC", due_at=utcnow(), medication_name="Statin").insert()).id)
    return ids


async def test_unlinked_users_refused_everywhere(api: Api) -> None:
    patient = await api.register("patient")
    linked = await api.register("clinician")  # a clinician may do all a caregiver may, and set thresholds
    await api.link(patient, linked)
    strangers = [await api.register(role) for role in ("caregiver", "clinician", "patient")]
    sockets = {u.id: await api.socket(u) for u in [linked, *strangers]}
    ids = await patient_data(api, patient, sockets[linked.id])
    for method, path, body in ROUTES:
        url = _fill(path, ids)
        for stranger in strangers:
            status, err = await api.request(method, url, stranger, json=_fill(body, ids))
            assert status == 403 and err["error"]["code"] == "forbidden", (method, path, stranger.role)
        status, _ = await api.request(method, url, linked, json=_fill(body, ids))
        assert status < 300, (method, path)
    for event, payload in EVENTS:
        for stranger in strangers:
            reply = await sockets[stranger.id].call(event, _fill(payload, ids))
            assert reply["ok"] is False and reply["error"]["code"] == "forbidden", (event, stranger.role)
            assert "data" not in reply
        assert (await sockets[linked.id].call(event, _fill(payload, ids)))["ok"] is True, event
    denied = await AuditEntry.find(AuditEntry.outcome == "denied").count()
    assert denied == len(strangers) * (len(ROUTES) + len(EVENTS))
