"""Per-device delivery over real sockets, checked at what the push outbox (``DevicePush``) is asked to send: an
alert, a due dose or an urgent notification goes to each registered device that has not confirmed it in time,
whatever other sockets are open (at once to a device with no socket); other notifications to each device with no
socket; a call rings by VoIP push the callee's devices with no socket, then those that do not acknowledge
``call:incoming``, and the ring is cancelled when the call is answered, cancelled or missed.

The checks after the delay run the due-time sweep with a time past it (``HEALTHMATE_ALERT_PUSH_AFTER_S`` is long
here, so no device's confirmation races a timer); one test lets the periodic claimer do it after a short delay."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from beanie import PydanticObjectId

from server.alerts import device_delivery
from server.alerts.device_delivery import DeviceDelivery
from server.alerts.documents import PushWatch
from server.app import SERVER, create_app
from server.core.config import Settings
from server.core.documents import utcnow
from server.infra.embedded_store import EmbeddedStore
from signaling.call_state import Action
from signaling.documents import CallSession
from tests.alert_clients import crisis
from tests.conftest import make_settings
from tests.device_pushes import Recorder, device
from tests.helpers import Api, User, raw_socket
from tests.test_medications import create
from tests.test_scheduler import add_dose

LONG_S = 60.0  # the push delay of the tests that run the sweep themselves


@pytest.fixture
async def settings(store: EmbeddedStore, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """Overrides from ``@pytest.mark.parametrize("settings", [{...}], indirect=True)``."""
    return make_settings(store.url, tmp_path, **{"alert_push_after_s": LONG_S, "call_push_after_s": 1.0,
                                                 **getattr(request, "param", {})})


@pytest.fixture
def pushes(api: Api) -> Recorder:
    return Recorder(api.app[SERVER].notifications.delivery.push)  # type: ignore[index,union-attr]


def delivery(api: Api) -> DeviceDelivery:
    return api.app[SERVER].notifications.delivery  # type: ignore[index,return-value]


async def watches_of(user: User) -> int:
    return await PushWatch.find(PushWatch.user_id == PydanticObjectId(user.id)).count()


async def noted(user: User, device_id: str) -> None:
    """A push at once to ``device_id`` (no socket) is noted on the user's watch: the sweep leaves that device out."""
    for _ in range(200):
        if await PushWatch.find(PushWatch.user_id == PydanticObjectId(user.id), PushWatch.pushed == device_id).count():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no watch of {user.id} notes {device_id}")


async def sweep_after_delay(api: Api) -> None:
    """Run the due-time sweep as if the push delay had passed."""
    await delivery(api).sweep(utcnow() + timedelta(seconds=LONG_S + 1))


async def team(api: Api, members: int) -> tuple[User, list[User]]:
    patient = await api.register("patient")
    carers = [await api.register("caregiver") for _ in range(members)]
    for carer in carers:
        await api.link(patient, carer)
    return patient, carers


async def test_an_alert_is_pushed_to_each_device_that_has_not_confirmed_it(api: Api, pushes: Recorder) -> None:
    patient, (ana, ben) = await team(api, 2)
    silent = await device(api, ana, "ana-phone")  # connected, frozen in the background: never confirms
    tab = await device(api, ben, "ben-tab")  # the dashboard, open: confirms
    await device(api, ben, "ben-phone", stay=False)  # registered, its app closed

    await (await api.socket(patient)).ok("bp:add", crisis())
    (alert,) = await tab.events.wait("alert:new")
    await tab.ok("alert:received", {"alert_id": alert["id"]})
    await silent.events.wait("alert:new")
    # The phone with no socket is pushed at once, though Ben's tab is open; nothing else yet.
    await pushes.wait(lambda: pushes.devices_pushed(ben) == ["ben-phone"])
    await noted(ben, "ben-phone")
    assert pushes.devices_pushed(ana) == [] and await watches_of(ana) == 1

    await sweep_after_delay(api)
    assert pushes.devices_pushed(ana) == ["ana-phone"] and pushes.devices_pushed(ben) == ["ben-phone"]
    assert {kind for _, _, kind in pushes.pushed} == {"alert"}
    assert await PushWatch.count() == 0  # done: a later sweep (or another process) has nothing left to push
    await sweep_after_delay(api)
    assert len(pushes.pushed) == 2

    # Nobody acknowledged it: its escalation goes to every device again, confirmed before or not.
    notes = api.app[SERVER].notifications  # type: ignore[index]
    await notes.notify([ana.id, ben.id], "alert", alert["title"], urgency="critical", live=False,
                       data={"alert_id": alert["id"], "level": 1})
    await sweep_after_delay(api)
    assert sorted(pushes.devices_pushed(ben)) == ["ben-phone", "ben-phone", "ben-tab"]
    assert pushes.devices_pushed(ana) == ["ana-phone", "ana-phone"]


@pytest.mark.parametrize("settings", [{"alert_push_after_s": 0.3}], indirect=True)
async def test_a_background_phone_is_pushed_after_the_delay(api: Api, pushes: Recorder) -> None:
    patient, (ana,) = await team(api, 1)
    silent = await device(api, ana, "ana-phone")
    await (await api.socket(patient)).ok("bp:add", crisis())
    await silent.events.wait("alert:new")
    await pushes.wait(lambda: pushes.devices_pushed(ana) == ["ana-phone"])  # by the periodic claimer


async def test_a_due_dose_is_pushed_to_each_device_that_has_not_confirmed_it(api: Api, pushes: Recorder) -> None:
    patient = await api.register("patient")
    tab = await device(api, patient, "pat-tab")
    silent = await device(api, patient, "pat-phone")
    await device(api, patient, "pat-watch", stay=False)
    med = await create(tab, patient.id, schedule={"times": ["03:00"]})
    dose = await add_dose(patient, med, utcnow())

    (due,) = await tab.events.wait("dose:due")
    assert due["id"] == str(dose.id)
    assert await tab.ok("dose:received", {"dose_id": due["id"]}) == {"dose_id": str(dose.id), "device_id": "pat-tab"}
    await silent.events.wait("dose:due")
    await pushes.wait(lambda: pushes.devices_pushed(patient, "reminder") == ["pat-watch"])  # no socket: at once
    await noted(patient, "pat-watch")
    await sweep_after_delay(api)
    assert sorted(pushes.devices_pushed(patient, "reminder")) == ["pat-phone", "pat-watch"]
    reply = await tab.call("dose:received", {"dose_id": "not-an-id"})
    assert reply["ok"] is False and reply["error"]["code"] == "invalid_id"


async def test_urgent_notifications_wait_for_confirmation_others_go_to_devices_with_no_socket(
        api: Api, pushes: Recorder) -> None:
    user = await api.register("caregiver")
    tab = await device(api, user, "tab")
    silent = await device(api, user, "phone")
    await device(api, user, "watch", stay=False)
    notes = api.app[SERVER].notifications  # type: ignore[index]

    [normal] = await notes.notify([user.id], "link_request", "Someone asks to link")
    await pushes.wait(lambda: pushes.devices_pushed(user) == ["watch"])  # not the connected tab and phone
    [urgent] = await notes.notify([user.id], "device_disconnected", "The sensor stopped", urgency="high")
    (live,) = [n for n in await tab.events.wait("notification:new", 2) if n["id"] == str(urgent.id)]
    assert (await tab.ok("notification:received", {"id": live["id"]}))["device_id"] == "tab"
    await silent.events.wait("notification:new", 2)
    await pushes.wait(lambda: len(pushes.pushed) == 2)
    await sweep_after_delay(api)
    assert pushes.pushed == [(user.id, "watch", "link_request"), (user.id, "watch", "device_disconnected"),
                             (user.id, "phone", "device_disconnected")]
    assert normal.urgency == "normal"


async def test_two_processes_push_a_due_watch_once(store: EmbeddedStore, redis_url: str, tmp_path: Path,
                                                   aiohttp_server: Any) -> None:
    """Two server processes on one Redis and one store: the phone's socket is held by one, the notification raised
    in the other; the other knows the phone is connected (no push at once), and the due watch is pushed once."""
    settings = make_settings(store.url, tmp_path, redis_url=redis_url, alert_push_after_s=0.3)
    one = await aiohttp_server(create_app(settings))
    two = await aiohttp_server(create_app(settings.model_copy(update={"port": 0})))
    records = [Recorder(server.app[SERVER].notifications.delivery.push) for server in (one, two)]
    async with Api.of(two) as api:
        user = await api.register("caregiver")
        silent = await device(api, user, "phone")
        [note] = await one.app[SERVER].notifications.notify([user.id], "device_disconnected", "The sensor stopped",
                                                           urgency="critical")
        await silent.events.wait("notification:new")
        for _ in range(200):
            if sum(len(r.pushed) for r in records) and not await PushWatch.count():
                break
            await asyncio.sleep(0.05)
        assert [p for r in records for p in r.pushed] == [(user.id, "phone", "device_disconnected")]
        assert note.urgency == "critical"


# --- calls -------------------------------------------------------------------------------------------------


async def invite(api: Api, caller: User, callee: User) -> dict[str, Any]:
    sock = await api.socket(caller)
    return {"sock": sock, **await sock.ok("call:invite", {"callee": callee.id, "media": "audio"})}


async def test_a_call_rings_the_devices_with_no_socket_and_stops_when_answered_elsewhere(
        api: Api, pushes: Recorder) -> None:
    patient, (carer,) = await team(api, 1)
    tab = await device(api, patient, "pat-tab")  # connected: acknowledges call:incoming (the client acks)
    await device(api, patient, "pat-phone", stay=False)
    call = await invite(api, carer, patient)
    await tab.events.wait("call:incoming")
    await pushes.wait(lambda: (patient.id, call["id"], ["pat-phone"]) in pushes.rings)
    ringer = api.app[SERVER].calls.ringer  # type: ignore[index]
    for _ in range(200):  # the later ring, to devices that did not acknowledge, has been decided
        if call["id"] not in ringer.acked:
            break
        await asyncio.sleep(0.05)
    assert pushes.rings == [(patient.id, call["id"], ["pat-phone"])] and pushes.cancels == []
    await tab.ok("call:accept", {"call_id": call["id"]})
    await pushes.wait(lambda: (patient.id, call["id"], "answered_elsewhere") in pushes.cancels)


async def test_a_device_that_does_not_acknowledge_is_rung_and_the_ring_cancelled_or_missed(
        api: Api, pushes: Recorder) -> None:
    patient, (carer,) = await team(api, 1)
    await device(api, patient, "pat-phone", stay=False)
    frozen = await raw_socket(api, {"token": patient.access_token, "device_id": "pat-phone"})  # never acks
    try:
        first = await invite(api, carer, patient)
        await pushes.wait(lambda: (patient.id, first["id"], ["pat-phone"]) in pushes.rings)
        await first["sock"].ok("call:cancel", {"call_id": first["id"]})  # the caller hangs up while it rings
        await pushes.wait(lambda: (patient.id, first["id"], "cancelled") in pushes.cancels)

        second = await invite(api, carer, patient)
        await pushes.wait(lambda: (patient.id, second["id"], ["pat-phone"]) in pushes.rings)
        # The ring time is up (as the sweep of any process finds it): missed.
        second_id = PydanticObjectId(second["id"])
        await CallSession.get_pymongo_collection().update_one({"_id": second_id},
                                                              {"$set": {"ring_deadline": utcnow()}})
        await api.app[SERVER].calls.timers.expire(second_id, Action.TIMEOUT)  # type: ignore[index]
        await pushes.wait(lambda: (patient.id, second["id"], "missed") in pushes.cancels)
    finally:
        await frozen.close()


async def test_lookups_of_registrations_asked_together_share_one_query_and_each_gets_its_own(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """A claim's batch of reminders is notified patient by patient at once: their registration lookups share one
    query, and each caller is told its own users' devices only."""
    users = [await api.register("patient") for _ in range(3)]
    for i, user in enumerate(users[:2]):
        await device(api, user, f"phone-{i}", stay=False)
    ids = [PydanticObjectId(u.id) for u in users]
    queries: list[set[PydanticObjectId]] = []
    query = device_delivery.registered

    async def counted(user_ids: Any) -> device_delivery.Registered:
        queries.append(set(user_ids))
        return await query(user_ids)

    monkeypatch.setattr(delivery(api)._registered, "work", counted)
    found = await asyncio.gather(*(delivery(api).registered([uid]) for uid in ids),
                                 delivery(api).registered(ids[:2]))
    assert queries == [set(ids)]
    assert found == [{ids[0]: {"phone-0"}}, {ids[1]: {"phone-1"}}, {}, {ids[0]: {"phone-0"}, ids[1]: {"phone-1"}}]
    assert await delivery(api).registered([ids[2]]) == {}  # a later lookup is a query of its own
    assert queries == [set(ids), {ids[2]}]
