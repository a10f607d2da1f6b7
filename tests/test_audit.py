"""The audit log: who touched a patient's data, paged by cursor, and nothing to edit or delete."""

from __future__ import annotations

from tests.helpers import Api


async def test_patient_sees_who_read_their_data(api: Api) -> None:
    patient = await api.register("patient")
    carer = await api.register("caregiver")
    stranger = await api.register("clinician")
    await api.link(patient, carer)
    assert (await api.request("GET", f"/api/patients/{patient.id}", carer))[0] == 200
    assert (await api.request("GET", f"/api/patients/{patient.id}", stranger))[0] == 403
    status, page = await api.request("GET", "/api/audit", patient)
    assert status == 200
    reads = [e for e in page["items"] if e["action"] == "patient.read"]
    assert [(e["actor_id"], e["outcome"]) for e in reads] == [(stranger.id, "denied"), (carer.id, "ok")]
    assert reads[0]["actor_role"] == "clinician" and reads[0]["at"].endswith("Z")
    assert reads[0]["client_addr"] == "127.0.0.1"
    actions = {e["action"] for e in page["items"]}
    assert {"link.code_create", "link.create"} <= actions
    # The caregiver sees their own actions, not the patient's whole log.
    _, theirs = await api.request("GET", "/api/audit", carer)
    assert theirs["items"] and all(e["actor_id"] == carer.id for e in theirs["items"])


async def test_cursor_pages_cover_everything_once(api: Api) -> None:
    patient = await api.register("patient")
    carer = await api.register("caregiver")
    await api.link(patient, carer)
    for _ in range(7):
        await api.request("GET", f"/api/patients/{patient.id}", carer)
    _, everything = await api.request("GET", "/api/audit?limit=200", patient)
    seen: list[str] = []
    cursor = None
    while True:
        query = "/api/audit?limit=3" + (f"&before={cursor}" if cursor else "")
        status, page = await api.request("GET", query, patient)
        assert status == 200 and len(page["items"]) <= 3
        seen += [e["id"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [e["id"] for e in everything["items"]] and len(seen) == len(set(seen)) >= 9
    for bad in ("?limit=0", "?limit=1000", "?limit=abc", "?before=nonsense"):
        status, body = await api.request("GET", "/api/audit" + bad, patient)
        assert status == 422 and body["error"]["code"] == "invalid_query", bad


async def test_audit_cannot_be_changed_through_the_api(api: Api) -> None:
    patient = await api.register("patient")
    _, page = await api.request("GET", "/api/audit", patient)
    entry = page["items"][0]["id"]
    for method, path in (("DELETE", "/api/audit"), ("PUT", "/api/audit"), ("PATCH", "/api/audit"),
                         ("POST", "/api/audit"), ("DELETE", f"/api/audit/{entry}"), ("PUT", f"/api/audit/{entry}")):
        status, body = await api.request(method, path, patient, json={})
        assert status in (404, 405) and "error" in body, (method, path)
    _, after = await api.request("GET", "/api/audit", patient)
    assert after["items"][0]["id"] == entry
    status, body = await api.request("GET", "/api/audit")
    assert status == 401 and body["error"]["code"] == "unauthorized"
