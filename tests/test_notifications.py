"""Notifications: persisted first, pushed live to every device of the user, listed, counted,
marked read and deleted by their owner only; which devices are connected is known across processes (what is
pushed to which device: tests/test_device_delivery.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from beanie import PydanticObjectId

from server.alerts.documents import Notification
from server.app import SERVER
from tests.conftest import make_settings
from tests.helpers import Api, User, connect
from tests.query_plans import QUERIES


async def test_persisted_then_pushed_to_every_device(api: Api) -> None:
    user = await api.register("caregiver")
    phone, tablet = await api.socket(user), await api.socket(user)
    other = await api.socket(await api.register("caregiver"))
    notes = api.app[SERVER].notifications  # type: ignore[index]
    [doc] = await notes.notify([user.id], "reminder", "Take your pills", "Metformin 500 mg", urgency="high",
                               data={"dose_id": "x"})
    assert await Notification.get(doc.id) is not None
    for sock in (phone, tablet):
        [pushed] = await sock.events.wait("notification:new")
        assert pushed["id"] == str(doc.id) and pushed["title"] == "Take your pills" and pushed["urgency"] == "high"
    await asyncio.sleep(0.2)
    assert other.events.of("notification:new") == []


async def test_list_count_read_delete(api: Api) -> None:
    user, stranger = await api.register("patient"), await api.register("patient")
    sock = await api.socket(user)
    notes = api.app[SERVER].notifications  # type: ignore[index]
    docs = [d for i in range(5) for d in await notes.notify([user.id], "alert", f"n{i}")]
    [theirs] = await notes.notify([stranger.id], "alert", "not yours")
    page = await sock.ok("notifications:list", {"limit": 3})
    assert [n["title"] for n in page["items"]] == ["n4", "n3", "n2"] and page["unread"] == 5
    rest = await sock.ok("notifications:list", {"limit": 3, "before": page["next_cursor"]})
    assert [n["title"] for n in rest["items"]] == ["n1", "n0"] and rest["next_cursor"] is None
    read = await sock.ok("notifications:mark-read", {"id": str(docs[0].id)})
    assert read == {"marked": 1, "unread": 4}
    assert (await sock.ok("notifications:unread-count"))["unread"] == 4
    assert (await sock.ok("notifications:list", {"unread_only": True}))["items"][-1]["title"] == "n1"
    # Someone else's notification is no different from one that does not exist.
    for event, payload in (("notifications:mark-read", {"id": str(theirs.id)}),
                           ("notifications:delete", {"id": str(theirs.id)})):
        reply = await sock.call(event, payload)
        assert reply["ok"] is False and reply["error"]["code"] == "not_found", event
    assert (await Notification.get(theirs.id)).read_at is None  # type: ignore[union-attr]
    for bad in ({}, {"id": "zz"}, {"all": True, "id": str(docs[1].id)}, {"id": str(docs[1].id), "extra": 1}):
        reply = await sock.call("notifications:mark-read", bad)
        assert reply["ok"] is False and set(reply["error"]) == {"code", "message", "details"}, bad
    assert (await sock.ok("notifications:delete", {"id": str(docs[4].id)}))["unread"] == 3
    assert (await sock.ok("notifications:mark-read", {"all": True})) == {"marked": 3, "unread": 0}
    status, body = await api.request("GET", "/api/notifications?limit=10", user)
    assert status == 200 and [n["title"] for n in body["items"]] == ["n3", "n2", "n1", "n0"]


async def test_rest_history(api: Api) -> None:
    user, stranger = await api.register("clinician"), await api.register("clinician")
    notes = api.app[SERVER].notifications  # type: ignore[index]
    docs = [d for i in range(3) for d in await notes.notify([user.id], "link_request", f"r{i}")]
    status, body = await api.request("GET", "/api/notifications?unread=1", user)
    assert status == 200 and body["unread"] == 3 and len(body["items"]) == 3
    status, _ = await api.request("POST", f"/api/notifications/{docs[0].id}/read", stranger)
    assert status == 404
    status, body = await api.request("POST", f"/api/notifications/{docs[0].id}/read", user)
    assert status == 200 and body["unread"] == 2
    status, _ = await api.request("DELETE", f"/api/notifications/{docs[1].id}", stranger)
    assert status == 404
    status, body = await api.request("DELETE", f"/api/notifications/{docs[1].id}", user)
    assert status == 200 and body["unread"] == 1
    status, body = await api.request("POST", "/api/notifications/read-all", user)
    assert status == 200 and body["marked"] == 1
    status, body = await api.request("GET", "/api/notifications?limit=0", user)
    assert status == 422 and body["error"]["code"] == "invalid_query"
    status, _ = await api.request("GET", "/api/notifications")
    assert status == 401


async def test_online_is_known_across_processes(store, redis_url, tmp_path, aiohttp_server) -> None:  # type: ignore[no-untyped-def]
    """With Redis, a socket on one process makes its user online for the other."""
    from server.app import create_app

    settings = make_settings(store.url, tmp_path, redis_url=redis_url)
    one = await aiohttp_server(create_app(settings))
    two = await aiohttp_server(create_app(settings.model_copy(update={"port": 0})))
    async with Api.of(one) as a:
        user = await a.register("caregiver")
        rt_two = two.app[SERVER].realtime
        assert await rt_two.user_online(user.id) is False and await rt_two.live_devices(user.id) == set()
        sock = await connect(a.base_url, None, auth={"token": user.access_token, "device_id": "phone-1"})
        assert await rt_two.user_online(user.id) is True
        assert await rt_two.live_devices(user.id) == {"phone-1"}  # which app installations, for per-device push
        await sock.close()
        for _ in range(50):
            if not await rt_two.user_online(user.id):
                break
            await asyncio.sleep(0.02)
        assert await rt_two.user_online(user.id) is False and await rt_two.live_devices(user.id) == set()


async def test_a_page_reads_a_span_and_leaves_out_patients_no_longer_cared_for(api: Api) -> None:
    """The store's filter of a page holds no list of patients (the store ranges through no ``$in``: it read all of
    the user's notifications for every page): a span of ``_id`` on an index, the patients the user may see
    checked in the server. One about a patient whose link was revoked is not listed, however far back."""
    patient, other, carer = (await api.register("patient"), await api.register("patient"),
                             await api.register("caregiver"))
    await api.link(patient, carer)
    now = datetime.now(UTC)

    def note(days_ago: float, title: str, about: User | None, read: bool = False) -> Notification:
        at = now - timedelta(days=days_ago)
        return Notification(id=PydanticObjectId.from_datetime(at), user_id=PydanticObjectId(carer.id), kind="alert",
                            title=title, patient_id=PydanticObjectId(about.id) if about else None,
                            created_at=at, read_at=at if read else None)

    # "other" was never linked (as a link revoked): theirs stay out, dense ones this week as old ones.
    await Notification.insert_many([
        note(0.1, "a", patient), note(0.2, "x", other), note(0.3, "b", None, read=True), note(0.4, "y", other),
        note(3, "c", patient), note(40, "d", patient, read=True), note(41, "z", other), note(600, "e", None)])
    sock = await api.socket(carer)
    with QUERIES.tap() as seen:
        first = await sock.ok("notifications:list", {"limit": 2})
    assert [n["title"] for n in first["items"]] == ["a", "b"]
    [query] = [q for c, q in seen if c == "notifications" and "_id" in q]
    assert "patient_id" not in query and query["_id"]["$gte"].generation_time > now - timedelta(days=8)
    titles, cursor = [n["title"] for n in first["items"]], first["next_cursor"]
    while cursor:
        page = await sock.ok("notifications:list", {"limit": 2, "before": cursor})
        titles += [n["title"] for n in page["items"]]
        cursor = page["next_cursor"]
    assert titles == ["a", "b", "c", "d", "e"]
    unread = await sock.ok("notifications:list", {"limit": 10, "unread_only": True})
    assert [n["title"] for n in unread["items"]] == ["a", "c", "e"] and unread["unread"] == 3
