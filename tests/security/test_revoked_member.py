"""Access follows the current link: a clinician whose link to a patient was revoked keeps a valid session,
open sockets and every id seen while linked (an alert, the patient's pictures, a call they recorded together),
and gets nothing of the patient with any of it, at once and in every process.

The tables cover every route and event of the running app: those with a ``patient_id`` (``tests/test_access``'s
tables, which must name them all), those reaching the patient's data by another id (BY_ID_*), the lists that
could show it (LISTS_*), and the rest, each with why it holds nothing of another patient (NOT_PATIENT_DATA_*).
A route or event added later fails ``test_every_route_and_event_is_in_a_table`` until it is put in one; if it
reads a patient's data, the revoked member is tried on it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from server.app import SERVER
from tests.call_peers import recorded_call
from tests.helpers import Api, Sock, User, process_env, server_processes
from tests.test_access import EVENTS, ROUTES, _fill, patient_data
from tests.test_uploads import image, upload

# Routes reaching one patient's data by another id: the refusal a revoked member gets.
BY_ID_ROUTES: dict[tuple[str, str], tuple[int, str]] = {
    ("GET", "/api/alerts/{alert_id}"): (403, "forbidden"),
    ("GET", "/api/uploads/{upload_id}"): (403, "forbidden"),  # the patient's avatar and the member's own upload
    ("GET", "/api/uploads/{upload_id}/info"): (403, "forbidden"),
    ("GET", "/api/calls/{call_id}/recording"): (404, "not_found"),
    ("POST", "/api/uploads"): (403, "forbidden"),  # a medication image for the patient (form field patient_id)
}
# Events reaching one patient's data (or the patient) by another id: payload and the refusal's code.
CALL_REFUSED = ("not_found", "invalid_transition", "forbidden")
BY_ID_EVENTS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "alert:get": ({"alert_id": "{alert_id}"}, ("forbidden",)),
    "alert:ack": ({"alert_id": "{alert_id}"}, ("not_found",)),
    "alert:resolve": ({"alert_id": "{alert_id}"}, ("not_found",)),
    "contact:update": ({"contact_id": "{contact_id}", "notes": "planted"}, ("forbidden",)),
    "contact:delete": ({"contact_id": "{contact_id}"}, ("forbidden",)),
    "bp:update": ({"reading_id": "{reading_id}", "note": "planted"}, ("forbidden",)),
    "bp:delete": ({"reading_id": "{reading_id}", "reason": "planted"}, ("forbidden",)),
    "call:invite": ({"callee": "{patient_id}"}, ("forbidden",)),
    # The call they had, ended when the link was (signaling): nothing more to do in it.
    **{name: ({"call_id": "{call_id}", **extra}, CALL_REFUSED) for name, extra in (
        ("call:accept", {}), ("call:reject", {}), ("call:cancel", {}), ("call:hangup", {}), ("call:resume", {}),
        ("call:join", {}), ("call:leave", {}), ("call:consent", {"record": True}),
        ("call:media-offer", {"sdp": "v=0"}), ("call:signal", {"type": "offer", "sdp": "v=0"}))},
}
# Lists that could show the patient's data: the revoked member's shows nothing of the patient.
LISTS_ROUTES = {("GET", "/api/alerts"), ("GET", "/api/patients"), ("GET", "/api/overview"),
                ("GET", "/api/notifications"), ("GET", "/api/links")}
LISTS_EVENTS: dict[str, dict[str, Any] | None] = {"alerts:list": {}, "patients:list": None, "links:list": None,
                                                  "notifications:list": {}, "notifications:unread-count": None}
# Nothing of another patient's: why.
NOT_PATIENT_DATA_ROUTES = {
    *(("POST", f"/api/auth/{a}") for a in ("register", "login", "refresh", "logout")),  # one's own account
    ("GET", "/api/me"), ("PATCH", "/api/me"), ("POST", "/api/me/password"),
    ("POST", "/api/links/codes"), ("GET", "/api/links/codes/{code}/qr.png"),  # a patient's own codes
    ("POST", "/api/links/redeem"), ("DELETE", "/api/links/{link_id}"),  # links: one's own (the ended one: 404)
    ("GET", "/api/audit"),  # what concerns oneself: one's own actions (and, for a patient, on their data)
    ("GET", "/api/orgs"), ("GET", "/api/orgs/{org_id}/members"), ("POST", "/api/orgs/{org_id}/invitations"),
    ("DELETE", "/api/orgs/{org_id}/invitations/{invitation_id}"), ("POST", "/api/invitations/accept"),
    ("POST", "/api/orgs/{org_id}/members/{user_id}/suspend"),
    ("POST", "/api/orgs/{org_id}/members/{user_id}/reinstate"),  # organisations: members, for their admins
    ("GET", "/api/calls/ice-servers"),  # TURN credentials for oneself
    ("GET", "/api/calls"),  # one's own call history (times, who); its recordings as BY_ID_ROUTES
    ("POST", "/api/notifications/read-all"), ("POST", "/api/notifications/{notification_id}/read"),
    ("DELETE", "/api/notifications/{notification_id}"),  # changes to one's own (the listing: LISTS_ROUTES)
    ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/api/openapi.yaml"), ("GET", "/api/asyncapi.yaml"),
    ("GET", "/"), ("GET", "/static/{name}"), ("GET", "/vendor/{name}"), ("GET", "/api"),  # the app, its docs
    ("GET", "/app"), ("GET", "/app/"), ("GET", "/app/{name}"),  # the patients' and caregivers' app's files
    ("GET", "/api/push/vapid-key"),  # the server's public key
    ("GET", "/metrics"), ("GET", "/api/admin/push-stats"),  # operational counts, no user's data
    ("GET", "/socket.io/"), ("POST", "/socket.io/"), ("OPTIONS", "/socket.io/"),  # the transport
}
NOT_PATIENT_DATA_EVENTS = {
    "links:create-code", "links:redeem", "links:revoke",  # one's own links
    "notifications:mark-read", "notifications:delete", "push:register", "push:unregister",  # one's own
    "alert:help",  # a patient raises an alert about themselves (a member is refused by role)
    "alert:received",  # one's own device's receipt: tells nothing back (a thousand receipts must stay cheap)
    "dose:received", "notification:received",  # the same: a receipt under one's own id, read by nobody else
    "sys:ping",
    # Device events: a user is refused by role; a device acts for its own patient only.
    "stream:open", "stream:frame", "stream:close", "stream:rtc-offer", "device:heartbeat",
    "box:hello", "box:drawers", "box:drawer-opened", "box:drawer-closed",
}


def test_every_route_and_event_is_in_a_table(api: Api) -> None:
    assert api.app is not None
    served = {(r.method, r.resource.canonical) for r in api.app.router.routes()
              if r.resource is not None and r.method != "HEAD"}
    tried = {(m, p) for m, p, _ in ROUTES} | set(BY_ID_ROUTES) | LISTS_ROUTES
    assert served == tried | NOT_PATIENT_DATA_ROUTES and not tried & NOT_PATIENT_DATA_ROUTES
    events = set(api.app[SERVER].realtime.router.events)
    tried_events = {n for n, _ in EVENTS} | set(BY_ID_EVENTS) | set(LISTS_EVENTS)  # alerts:list: with and without
    assert events == tried_events | NOT_PATIENT_DATA_EVENTS and not tried_events & NOT_PATIENT_DATA_EVENTS


async def _wait(condition: Any, what: str) -> None:
    for _ in range(100):
        if await condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"never: {what}")


async def _revoke(api: Api, patient: User, member: User) -> None:
    _, links = await api.request("GET", "/api/links", patient)
    (link,) = [lk for lk in links["items"] if lk["member"]["id"] == member.id]
    status, _ = await api.request("DELETE", f"/api/links/{link['id']}", patient)
    assert status == 200


async def _by_id_reads(api: Api, member: User, sock: Sock, ids: dict[str, str], events: bool = True
                       ) -> dict[str, Any]:
    """What the member gets from each BY_ID route (for each upload) and, if asked, event (some change or delete
    what they name), by name."""
    got: dict[str, Any] = {}
    for (method, path), _ in BY_ID_ROUTES.items():
        if path == "/api/uploads":
            got[f"{method} {path}"] = await upload(api, member, image("JPEG"), "medication", ids["patient_id"])
            continue
        for key in ("upload_id", "avatar_id") if "{upload_id}" in path else ("",):
            url = _fill(path, {**ids, "upload_id": ids[key]} if key else ids)
            got[f"{method} {path} {key}".strip()] = await api.request(method, url, member)
    for event, (payload, _) in BY_ID_EVENTS.items() if events else ():
        got[event] = await sock.call(event, _fill(payload, ids))
    return got


async def _shows_patient(api: Api, member: User, sock: Sock, patient: User) -> dict[str, bool]:
    """Whether each list the member can ask for shows anything of the patient (their id anywhere in it)."""
    shown = {}
    for method, path in LISTS_ROUTES:
        status, body = await api.request(method, path, member)
        assert status == 200, (path, body)
        shown[path] = patient.id in json.dumps(body)
    for event, payload in LISTS_EVENTS.items():
        reply = await sock.call(event, payload)
        assert reply["ok"] is True, (event, reply)
        shown[event] = patient.id in json.dumps(reply["data"])
    # The unread count names no one: it counts the patient's if it is more than the unread ones of others.
    unread = (await sock.ok("notifications:list", {"unread_only": True}))["items"]
    others = [n for n in unread if n["patient_id"] != patient.id]
    shown["notifications:unread-count"] = (await sock.ok("notifications:unread-count"))["unread"] > len(others)
    return shown


async def test_a_revoked_member_gets_nothing_of_the_patient(api: Api) -> None:
    patient, teammate = await api.register("patient", name="Ana"), await api.register("caregiver")
    member, other = await api.register("clinician"), await api.register("patient")  # still linked to `other`
    for p, m in ((patient, member), (patient, teammate), (other, member)):
        await api.link(p, m)
    m_sock, p_sock, t_sock = await api.socket(member), await api.socket(patient), await api.socket(teammate)
    ids = await patient_data(api, patient, m_sock)
    ids["alert_id"] = (await p_sock.ok("ml:triage", {"symptoms": ["chest_pain"]}))["alert_id"]
    ids["reading_id"] = (await p_sock.ok("bp:add", {"systolic": 130, "diastolic": 80,
                                                    "measured_at": "2026-01-01T08:00:00Z"}))["id"]
    status, mine = await upload(api, member, image("JPEG"), "medication", patient.id)
    status2, avatar = await upload(api, patient, image("PNG"))
    assert status == status2 == 201
    ids["upload_id"], ids["avatar_id"] = mine["id"], avatar["id"]
    ids["call_id"] = await recorded_call(api, member, patient)
    (raised,) = await m_sock.events.wait("alert:new")
    assert raised["id"] == ids["alert_id"]

    async def notified() -> bool:
        return (await m_sock.ok("notifications:list", {}))["items"] != []

    await _wait(notified, "the alert's notification")  # written in the background
    # Linked, the member reads all of it (so what follows is the revocation's doing).
    linked = await _by_id_reads(api, member, m_sock, ids, events=False)
    for name in ("GET /api/alerts/{alert_id}", "GET /api/uploads/{upload_id} upload_id",
                 "GET /api/uploads/{upload_id} avatar_id", "GET /api/uploads/{upload_id}/info avatar_id",
                 "GET /api/calls/{call_id}/recording", "POST /api/uploads"):
        assert linked[name][0] in (200, 201), (name, linked[name])
    assert (await m_sock.call("alert:get", {"alert_id": ids["alert_id"]}))["ok"]
    assert all((await _shows_patient(api, member, m_sock, patient)).values())

    await _revoke(api, patient, member)
    for method, path, body in ROUTES:
        status, err = await api.request(method, _fill(path, ids), member, json=_fill(body, ids))
        assert status == 403 and err["error"]["code"] == "forbidden", (method, path, err)
    for event, payload in EVENTS:
        reply = await m_sock.call(event, _fill(payload, ids))
        assert reply["ok"] is False and reply["error"]["code"] == "forbidden" and "data" not in reply, (event, reply)
    revoked = await _by_id_reads(api, member, m_sock, ids)
    for name, got in revoked.items():
        if name in BY_ID_EVENTS:
            assert got["ok"] is False and "data" not in got and got["error"]["code"] in BY_ID_EVENTS[name][1], \
                (name, got)
            assert set(got["error"]) == {"code", "message", "details"}
        else:
            expected = BY_ID_ROUTES[tuple(name.split(" ")[:2])]  # type: ignore[index]
            assert (got[0], got[1]["error"]["code"]) == expected, (name, got)
    assert await _shows_patient(api, member, m_sock, patient) == dict.fromkeys(
        [p for _, p in LISTS_ROUTES] + list(LISTS_EVENTS), False)

    # Live: the teammate acknowledges the patient's alert; the revoked member is not told. The sentinel, an
    # alert of the patient the member is still linked to, comes after it on the same bus: by then it would be there.
    await t_sock.ok("alert:ack", {"alert_id": ids["alert_id"]})
    await t_sock.events.wait("alert:acknowledged")
    await (await api.socket(other)).ok("ml:triage", {"symptoms": ["chest_pain"]})
    assert [a["patient"]["id"] for a in await m_sock.events.wait("alert:new", 2)] == [patient.id, other.id]
    assert m_sock.events.of("alert:acknowledged") == []


async def test_in_every_process_at_once(store: Any, redis_url: str, tmp_path: Any) -> None:
    """The member's socket and requests go to one server process, the revocation to another (Redis between)."""
    env = process_env(store.url, tmp_path, redis_url)
    async with server_processes(env, {**env, "HEALTHMATE_DATA_DIR": str(tmp_path / "b")}) as (a, b):
        async with Api(a.url) as on_a, Api(b.url) as on_b:
            patient, teammate = await on_a.register("patient"), await on_a.register("caregiver")
            member, other = await on_a.register("caregiver"), await on_a.register("patient")
            for p, m in ((patient, member), (patient, teammate), (other, member)):
                await on_a.link(p, m)
            m_sock, t_sock = await on_b.socket(member), await on_a.socket(teammate)
            alert_id = (await (await on_a.socket(patient)).ok("ml:triage", {"symptoms": ["chest_pain"]}))["alert_id"]
            await m_sock.events.wait("alert:new")
            status, picture = await upload(on_a, member, image("JPEG"), "medication", patient.id)
            assert status == 201 and (await on_b.request("GET", f"/api/alerts/{alert_id}", member))[0] == 200

            await _revoke(on_a, patient, member)  # on A; the member is on B
            status, err = await on_b.request("GET", f"/api/alerts/{alert_id}", member)
            assert status == 403 and err["error"]["code"] == "forbidden"
            status, err = await on_b.request("GET", f"/api/uploads/{picture['id']}", member)
            assert status == 403 and err["error"]["code"] == "forbidden"
            assert (await m_sock.call("alert:get", {"alert_id": alert_id}))["error"]["code"] == "forbidden"
            assert patient.id not in json.dumps(await m_sock.ok("alerts:list", {}))
            reply = await m_sock.call("live:subscribe", {"patient_id": patient.id})
            assert reply["error"]["code"] == "forbidden"
            await t_sock.ok("alert:ack", {"alert_id": alert_id})  # on A: not pushed to the member on B
            await (await on_a.socket(other)).ok("ml:triage", {"symptoms": ["chest_pain"]})  # the sentinel
            assert [x["patient"]["id"] for x in await m_sock.events.wait("alert:new", 2)] == [patient.id, other.id]
            assert m_sock.events.of("alert:acknowledged") == []
