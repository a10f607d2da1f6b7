"""Calls over real Socket.IO clients: ringing every device, first answer wins, refusals, signaling
only between the two sockets in the call, glare, renegotiation, drops and resumes, timeouts,
history and ICE servers; and the same across two server processes on one Redis."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId

from server.app import SERVER, create_app
from server.core.documents import utcnow
from server.infra.embedded_store import EmbeddedStore
from signaling.documents import CallLine, CallSession
from tests.conftest import make_settings
from tests.helpers import Api, Sock, User, process_env, server_processes

RING_S, GRACE_S = 1.0, 1.0  # the ring time of the test that waits for it; others ring for LONG_RING_S
LONG_RING_S = 30.0


@pytest.fixture
async def calls_api(request: pytest.FixtureRequest, store: EmbeddedStore, tmp_path: Path,
                    aiohttp_server) -> AsyncIterator[Api]:  # type: ignore[no-untyped-def]
    ring = getattr(request, "param", LONG_RING_S)
    settings = make_settings(store.url, tmp_path, call_ring_timeout_s=ring, call_grace_s=GRACE_S,
                             call_sweep_s=0.2, stun_urls=["stun:stun.example.org:3478"],
                             turn_urls=["turn:turn.example.org:3478?transport=udp"], turn_secret="coturn-secret")
    server = await aiohttp_server(create_app(settings))
    async with Api.of(server) as client:
        yield client


async def linked_pair(api: Api, member_role: str = "caregiver") -> tuple[User, User]:
    patient, member = await api.register("patient"), await api.register(member_role)
    await api.link(patient, member)
    return patient, member


async def refused(sock: Sock, event: str, data: Any, code: str) -> dict[str, Any]:
    reply = await sock.call(event, data)
    assert reply["ok"] is False and reply["error"]["code"] == code, reply
    assert "data" not in reply
    return reply["error"]


async def connected_call(api: Api, media: str = "audio") -> tuple[User, User, Sock, Sock, str]:
    patient, carer = await linked_pair(api)
    caller, callee = await api.socket(carer), await api.socket(patient)
    call = await caller.ok("call:invite", {"callee": patient.id, "media": media})
    await callee.events.wait("call:incoming")
    await callee.ok("call:accept", {"call_id": call["id"]})
    await caller.events.wait("call:accepted")
    return carer, patient, caller, callee, call["id"]


async def test_every_device_rings_first_answer_wins_and_signals_reach_only_the_peer(calls_api: Api) -> None:
    api = calls_api
    patient, carer = await linked_pair(api)
    caller = await api.socket(carer)
    phone, tablet = await api.socket(patient), await api.socket(patient)
    call = await caller.ok("call:invite", {"callee": patient.id, "media": "audio"})
    assert call["state"] == "ringing" and call["direction"] == "outgoing" and call["caller"]["id"] == carer.id
    for device in (phone, tablet):
        (incoming,) = await device.events.wait("call:incoming")
        assert incoming["id"] == call["id"] and incoming["media"] == "audio" and incoming["caller"]["id"] == carer.id
    # Before it is answered there is nobody to signal to.
    await refused(caller, "call:signal", {"call_id": call["id"], "type": "offer", "sdp": "v=0"}, "not_found")
    accepted = await tablet.ok("call:accept", {"call_id": call["id"]})
    assert accepted["state"] == "active" and accepted["direction"] == "incoming"
    (seen,) = await caller.events.wait("call:accepted")
    assert seen["id"] == call["id"]
    (elsewhere,) = await phone.events.wait("call:answered-elsewhere")
    assert elsewhere == {"call_id": call["id"]}
    err = await refused(phone, "call:accept", {"call_id": call["id"]}, "invalid_transition")
    assert err["details"] == {"state": "active", "action": "accept"}
    assert tablet.events.of("call:answered-elsewhere") == []

    offer = {"call_id": call["id"], "type": "offer", "sdp": "v=0 offer"}
    assert await caller.ok("call:signal", offer) == {"relayed": "offer"}
    (got,) = await tablet.events.wait("call:peer-signal")
    assert got["sdp"] == "v=0 offer" and got["type"] == "offer" and got["from_user"] == carer.id
    await tablet.ok("call:signal", {"call_id": call["id"], "type": "answer", "sdp": "v=0 answer"})
    candidate = {"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host", "sdpMid": "0",
                 "sdpMLineIndex": 0}
    await tablet.ok("call:signal", {"call_id": call["id"], "type": "candidate", "candidate": candidate})
    await tablet.ok("call:signal", {"call_id": call["id"], "type": "candidate", "candidate": None})
    signals = await caller.events.wait("call:peer-signal", 3)
    assert [s["type"] for s in signals] == ["answer", "candidate", "candidate"]
    assert signals[1]["candidate"] == candidate and signals[2]["candidate"] is None

    # The callee's other device, a stranger, and a linked clinician not in the call: the same refusal as no call.
    stranger = await api.socket(await api.register("caregiver"))
    clinician = await api.register("clinician")
    await api.link(patient, clinician)
    for outsider in (phone, stranger, await api.socket(clinician)):
        for event, data in [("call:signal", offer), ("call:hangup", {"call_id": call["id"]}),
                            ("call:signal", {**offer, "call_id": "0" * 24})]:
            if outsider is phone and event == "call:hangup":
                continue  # the callee may hang up from any of their devices
            await refused(outsider, event, data, "not_found")
    await asyncio.sleep(0.2)
    assert phone.events.of("call:peer-signal") == [] and stranger.events.of("call:peer-signal") == []
    assert len(tablet.events.of("call:peer-signal")) == 1

    await asyncio.sleep(0.05)
    ended = await caller.ok("call:hangup", {"call_id": call["id"]})
    assert ended["state"] == "ended" and ended["end_reason"] == "hangup" and ended["duration_s"] > 0
    for sock in (caller, phone, tablet):
        (end,) = await sock.events.wait("call:ended")
        assert end["reason"] == "hangup" and end["call_id"] == call["id"]
    await refused(tablet, "call:signal", offer, "not_found")
    await refused(caller, "call:hangup", {"call_id": call["id"]}, "invalid_transition")
    assert [t["state"] for t in ended["transitions"]] == ["ringing", "active", "ended"]
    assert [t["action"] for t in ended["transitions"]] == ["invite", "accept", "hangup"]
    assert await CallLine.find_all().count() == 0


async def test_only_linked_users_and_bad_input_refused(calls_api: Api) -> None:
    api = calls_api
    patient, carer = await linked_pair(api)
    stranger = await api.register("caregiver")
    other_patient = await api.register("patient")
    s_stranger, s_carer, s_patient = await api.socket(stranger), await api.socket(carer), await api.socket(patient)
    await refused(s_stranger, "call:invite", {"callee": patient.id}, "forbidden")
    await refused(s_patient, "call:invite", {"callee": stranger.id}, "forbidden")
    await refused(s_carer, "call:invite", {"callee": other_patient.id}, "forbidden")
    await refused(s_carer, "call:invite", {"callee": carer.id}, "forbidden")
    await refused(s_carer, "call:invite", {"callee": "0" * 24}, "forbidden")
    await refused(s_carer, "call:invite", {"callee": "nope"}, "invalid_id")
    for bad in [{"callee": patient.id, "media": "smell"}, {"callee": patient.id, "extra": 1}, {"callee": "x" * 100},
                None, "text", {"callee": patient.id, "media": "video", "sdp": "v=0"}]:
        await refused(s_carer, "call:invite", bad, "invalid_payload")
    assert await CallSession.find_all().count() == 0
    # Revoking the link ends the call in progress and stops new ones.
    live = await s_carer.ok("call:invite", {"callee": patient.id})
    await s_patient.events.wait("call:incoming")
    await s_patient.ok("call:accept", {"call_id": live["id"]})
    _, links = await api.request("GET", "/api/links", patient)
    await api.request("DELETE", f"/api/links/{links['items'][0]['id']}", patient)
    (end,) = await s_carer.events.wait("call:ended")
    assert end["call_id"] == live["id"] and end["reason"] == "link_revoked"
    await refused(s_carer, "call:invite", {"callee": patient.id}, "forbidden")
    _, _, caller, callee, call_id = await connected_call(api)
    for bad in [{"call_id": call_id, "type": "offer"}, {"call_id": call_id, "type": "answer", "sdp": ""},
                {"call_id": call_id, "type": "candidate", "candidate": {"candidate": "x", "evil": 1}},
                {"call_id": call_id, "type": "answer", "sdp": "v=0", "media": "video"},
                {"call_id": call_id, "type": "offer", "sdp": "x" * 200_001}, {"call_id": call_id, "type": "bye"}]:
        await refused(caller, "call:signal", bad, "invalid_payload")
    assert callee.events.of("call:peer-signal") == []


async def test_reject_cancel_busy_and_invalid_moves(calls_api: Api) -> None:
    api = calls_api
    patient, carer = await linked_pair(api)
    clinician = await api.register("clinician")
    await api.link(patient, clinician)
    s_carer, s_patient, s_clin = await api.socket(carer), await api.socket(patient), await api.socket(clinician)

    call = await s_carer.ok("call:invite", {"callee": patient.id})
    await refused(s_carer, "call:accept", {"call_id": call["id"]}, "not_found")  # the caller cannot answer
    await refused(s_patient, "call:cancel", {"call_id": call["id"]}, "not_found")  # nor the callee cancel
    await refused(s_carer, "call:hangup", {"call_id": call["id"]}, "invalid_transition")  # not connected yet
    await refused(s_carer, "call:resume", {"call_id": call["id"]}, "invalid_transition")
    # Someone else calling the patient now: busy, recorded in the history, and the patient's ringing goes on.
    err = await refused(s_clin, "call:invite", {"callee": patient.id}, "busy")
    busy = await CallSession.get(err["details"]["call_id"])
    assert busy is not None and busy.end_reason == "busy"
    # The caller placing a second call while the first rings: already in a call.
    other = await api.register("patient")
    await api.link(other, carer)
    await refused(s_carer, "call:invite", {"callee": other.id}, "already_in_call")
    rejected = await s_patient.ok("call:reject", {"call_id": call["id"]})
    assert rejected["end_reason"] == "rejected" and rejected["duration_s"] == 0
    (end,) = await s_carer.events.wait("call:ended")
    assert end["reason"] == "rejected"
    await refused(s_patient, "call:accept", {"call_id": call["id"]}, "invalid_transition")

    call = await s_clin.ok("call:invite", {"callee": patient.id, "media": "video"})
    cancelled = await s_clin.ok("call:cancel", {"call_id": call["id"]})
    assert cancelled["end_reason"] == "cancelled"
    ends = await s_patient.events.wait("call:ended", 2)
    assert ends[-1]["reason"] == "cancelled"

    # History, newest first, for both sides, with outcome and cursor pagination.
    status, page = await api.request("GET", "/api/calls?limit=2", patient)
    assert status == 200 and [c["outcome"] for c in page["items"]] == ["cancelled", "busy"]
    assert page["items"][0]["direction"] == "incoming" and page["items"][0]["media"] == "video"
    status, rest = await api.request("GET", f"/api/calls?limit=2&before={page['next_cursor']}", patient)
    assert [c["outcome"] for c in rest["items"]] == ["rejected"] and rest["next_cursor"] is None
    _, mine = await api.request("GET", "/api/calls", carer)
    assert [(c["outcome"], c["direction"]) for c in mine["items"]] == [("rejected", "outgoing")]
    _, theirs = await api.request("GET", "/api/calls", await api.register("patient"))
    assert theirs["items"] == []
    status, err = await api.request("GET", "/api/calls?before=xyz", patient)
    assert status == 422 and err["error"]["code"] == "invalid_query"
    assert (await api.request("GET", "/api/calls"))[0] == 401


async def test_crossing_invites_become_one_call(calls_api: Api) -> None:
    api = calls_api
    patient, carer = await linked_pair(api)
    s_carer, s_patient = await api.socket(carer), await api.socket(patient)
    first = await s_carer.ok("call:invite", {"callee": patient.id})
    second = await s_patient.ok("call:invite", {"callee": carer.id})  # at the same moment, the other way
    assert second["glare"] is True and second["id"] == first["id"] and second["state"] == "active"
    await s_carer.events.wait("call:accepted")
    assert await CallSession.find_all().count() == 1
    # Both invite each other concurrently: one call, connected.
    await s_carer.ok("call:hangup", {"call_id": first["id"]})
    a, b = await asyncio.gather(s_carer.call("call:invite", {"callee": patient.id}),
                                s_patient.call("call:invite", {"callee": carer.id}))
    assert a["ok"] and b["ok"], (a, b)
    assert a["data"]["id"] == b["data"]["id"]
    live = await CallSession.find(CallSession.state != "ended").to_list()
    assert len(live) == 1 and live[0].state == "active"


async def test_renegotiation_and_crossing_offers(calls_api: Api) -> None:
    _, _, caller, callee, call_id = await connected_call(calls_api)
    await caller.ok("call:signal", {"call_id": call_id, "type": "offer", "sdp": "v=0 a"})
    await callee.ok("call:signal", {"call_id": call_id, "type": "answer", "sdp": "v=0 b"})
    # The callee turns on video: a new offer with media; the call is now a video call.
    await callee.ok("call:signal", {"call_id": call_id, "type": "offer", "sdp": "v=0 video", "media": "video"})
    signals = await caller.events.wait("call:peer-signal", 2)
    assert signals[-1]["media"] == "video" and signals[-1]["type"] == "offer"
    # The caller offers at the same moment: the caller's offer wins; the callee's next one is refused.
    await caller.ok("call:signal", {"call_id": call_id, "type": "offer", "sdp": "v=0 crossing"})
    await refused(callee, "call:signal", {"call_id": call_id, "type": "offer", "sdp": "v=0 again"}, "glare")
    await callee.ok("call:signal", {"call_id": call_id, "type": "answer", "sdp": "v=0 rolled back"})
    await callee.ok("call:signal", {"call_id": call_id, "type": "offer", "sdp": "v=0 now"})  # free again
    call = await CallSession.get(call_id)
    assert call is not None and call.media == "video"
    assert [(t["action"], t.get("media")) for t in call.transitions][-1] == ("renegotiate", "video")


async def test_dropped_socket_resumes_within_grace_or_the_call_ends(calls_api: Api) -> None:
    api = calls_api
    carer, patient, caller, callee, call_id = await connected_call(api)
    await caller.client.disconnect()
    (dropped,) = await callee.events.wait("call:peer-dropped")
    assert dropped == {"call_id": call_id, "user_id": carer.id, "grace_s": GRACE_S}
    await refused(callee, "call:signal", {"call_id": call_id, "type": "offer", "sdp": "v=0"}, "peer_away")
    back = await api.socket(carer)
    resumed = await back.ok("call:resume", {"call_id": call_id})
    assert resumed["state"] == "active"
    (peer,) = await callee.events.wait("call:peer-resumed")
    assert peer["user_id"] == carer.id
    await back.ok("call:signal", {"call_id": call_id, "type": "offer", "sdp": "v=0 ice restart"})
    await callee.events.wait("call:peer-signal")
    await asyncio.sleep(GRACE_S + 0.5)  # the grace timer was cancelled: still connected
    assert (await CallSession.get(call_id)).state == "active"  # type: ignore[union-attr]
    # The callee's new socket takes over before the server noticed the old one went (no drop at all).
    replacement = await api.socket(patient)
    await replacement.ok("call:resume", {"call_id": call_id})
    await callee.close()
    await asyncio.sleep(0.3)
    assert (await CallSession.get(call_id)).state == "active"  # type: ignore[union-attr]
    # Now one drops and does not come back: the call ends after the grace period.
    await replacement.close()
    await back.events.wait("call:peer-dropped")
    (end,) = await back.events.wait("call:ended", timeout=GRACE_S + 3)
    assert end["reason"] == "connection_lost"
    call = await CallSession.get(call_id)
    assert call is not None and [t["action"] for t in call.transitions][-3:] == ["resume", "drop", "grace_expired"]
    # A participant's socket that vanished with its process (no disconnect ran) is found and dropped too.
    _, _, _, survivor, ghost_call = await connected_call(api)
    await CallSession.get_pymongo_collection().update_one({"_id": ObjectId(ghost_call)},
                                                        {"$set": {"caller_sid": "ghost-of-a-dead-process"}})
    await survivor.events.wait("call:peer-dropped", timeout=5)
    (end,) = await survivor.events.wait("call:ended", timeout=GRACE_S + 5)
    assert end["reason"] == "connection_lost"
    # A caller who drops while it still rings cancels the call.
    patient2, carer2 = await linked_pair(api)
    s1, s2 = await api.socket(carer2), await api.socket(patient2)
    ring = await s1.ok("call:invite", {"callee": patient2.id})
    await s1.close()
    (end,) = await s2.events.wait("call:ended")
    assert end == {"call_id": ring["id"], "reason": "cancelled", "duration_s": 0.0}


@pytest.mark.parametrize("calls_api", [RING_S], indirect=True)
async def test_unanswered_call_times_out_once_and_offline_callee_is_woken(calls_api: Api) -> None:
    api = calls_api
    patient, carer = await linked_pair(api)
    s_carer = await api.socket(carer)
    call = await s_carer.ok("call:invite", {"callee": patient.id})  # the patient has no socket connected
    _, notes = await api.request("GET", "/api/notifications", patient)
    (woken,) = notes["items"]
    assert woken["kind"] == "incoming_call" and woken["urgency"] == "high" and woken["data"]["call_id"] == call["id"]
    late = await api.socket(patient)  # connects within the ring time (woken by the push): it rings there
    (incoming,) = await late.events.wait("call:incoming")
    assert incoming["id"] == call["id"]
    (end,) = await s_carer.events.wait("call:ended", timeout=RING_S + 3)
    assert end["reason"] == "missed"
    (missed,) = await late.events.wait("notification:new")
    assert missed["kind"] == "missed_call" and missed["data"]["caller_id"] == carer.id
    assert missed["patient_id"] == patient.id
    await asyncio.sleep(0.5)
    assert len(late.events.of("call:ended")) == 1 and len(late.events.of("notification:new")) == 1
    # A callee with a device connected is not pushed to.
    second = await s_carer.ok("call:invite", {"callee": patient.id})
    await late.events.wait("call:incoming", 2)
    await s_carer.ok("call:cancel", {"call_id": second["id"]})
    _, notes = await api.request("GET", "/api/notifications", patient)
    assert [n["kind"] for n in notes["items"]] == ["missed_call", "incoming_call"]
    doc = await CallSession.get(call["id"])
    assert doc is not None and [t["action"] for t in doc.transitions] == ["invite", "timeout"]


async def test_ice_servers_carry_time_limited_turn_credentials(calls_api: Api) -> None:
    api = calls_api
    user = await api.register("patient")
    status, body = await api.request("GET", "/api/calls/ice-servers", user)
    assert status == 200
    stun, turn = body["ice_servers"]
    assert stun == {"urls": ["stun:stun.example.org:3478"]}
    assert turn["urls"] == ["turn:turn.example.org:3478?transport=udp"]
    expiry, _, name = turn["username"].partition(":")
    assert name == user.id and abs(int(expiry) - (time.time() + body["ttl_s"])) < 5
    expected = base64.b64encode(hmac.new(b"coturn-secret", turn["username"].encode(), hashlib.sha1).digest()).decode()
    assert turn["credential"] == expected
    assert (await api.request("GET", "/api/calls/ice-servers"))[0] == 401


async def test_calls_across_two_processes(store: EmbeddedStore, redis_url: str, tmp_path: Path) -> None:
    env = process_env(store.url, tmp_path, redis_url, call_ring_timeout_s=1.5, call_sweep_s=0.1, call_grace_s=5)
    async with server_processes(env, env) as (one, two):
        async with Api(one.url) as api1, Api(two.url) as api2:
            patient, carer = await linked_pair(api1)
            caller = await api1.socket(carer)
            phone, tablet = await api2.socket(patient), await api1.socket(patient)
            call = await caller.ok("call:invite", {"callee": patient.id})
            await phone.events.wait("call:incoming")
            await tablet.events.wait("call:incoming")
            # Both devices answer at once, one per process: exactly one wins.
            a, b = await asyncio.gather(phone.call("call:accept", {"call_id": call["id"]}),
                                        tablet.call("call:accept", {"call_id": call["id"]}))
            assert sorted([a["ok"], b["ok"]]) == [False, True], (a, b)
            winner, loser = (phone, tablet) if a["ok"] else (tablet, phone)
            await loser.events.wait("call:answered-elsewhere")
            await caller.events.wait("call:accepted")
            await caller.ok("call:signal", {"call_id": call["id"], "type": "offer", "sdp": "v=0 across"})
            (got,) = await winner.events.wait("call:peer-signal")
            assert got["sdp"] == "v=0 across"
            await refused(loser, "call:signal", {"call_id": call["id"], "type": "answer", "sdp": "v=0"}, "not_found")
            # The winner's socket drops; it resumes through the other process.
            await winner.close()
            await caller.events.wait("call:peer-dropped")
            other_api = api1 if winner is phone else api2
            back = await other_api.socket(patient)
            await back.ok("call:resume", {"call_id": call["id"]})
            await caller.events.wait("call:peer-resumed")
            await back.ok("call:signal", {"call_id": call["id"], "type": "offer", "sdp": "v=0 restart"})
            await caller.events.wait("call:peer-signal")
            await back.ok("call:hangup", {"call_id": call["id"]})
            await caller.events.wait("call:ended")

            # A ring timeout with both processes sweeping every 100 ms and one holding a timer: fires once.
            ring = await caller.ok("call:invite", {"callee": patient.id, "media": "video"})
            ends = await caller.events.wait("call:ended", count=2, timeout=5)
            assert ends[-1] == {"call_id": ring["id"], "reason": "missed", "duration_s": 0.0}
            (missed,) = await back.events.wait("notification:new")
            assert missed["kind"] == "missed_call" and missed["data"]["call_id"] == ring["id"]
            await asyncio.sleep(1.0)
            assert len(caller.events.of("call:ended")) == 2 and len(back.events.of("call:ended")) == 2
            assert len(back.events.of("notification:new")) == 1
            _, notes = await api1.request("GET", "/api/notifications", patient)
            assert [n["kind"] for n in notes["items"]] == ["missed_call"]
            _, history = await api2.request("GET", "/api/calls", patient)
            assert [c["outcome"] for c in history["items"]] == ["missed", "hangup"]
            assert [t["action"] for t in history["items"][0]["transitions"]] == ["invite", "timeout"]

            # Candidates are relayed from a route each process caches; a change made in the other
            # process (the callee's drop, then its resume there) replaces it at once.
            callee = await api2.socket(patient)
            third = await caller.ok("call:invite", {"callee": patient.id})
            await callee.events.wait("call:incoming")
            await callee.ok("call:accept", {"call_id": third["id"]})
            await caller.events.wait("call:accepted", count=2)
            candidate = {"call_id": third["id"], "type": "candidate", "candidate": {"candidate": "candidate:1 1 udp 1"}}
            await caller.ok("call:signal", candidate)
            await callee.events.wait("call:peer-signal")
            await callee.close()
            await caller.events.wait("call:peer-dropped", count=2)
            await refused(caller, "call:signal", candidate, "peer_away")
            again = await api2.socket(patient)
            await again.ok("call:resume", {"call_id": third["id"]})
            await caller.events.wait("call:peer-resumed", count=2)
            await caller.ok("call:signal", candidate)
            (relayed,) = await again.events.wait("call:peer-signal")
            assert relayed["candidate"] == {"candidate": "candidate:1 1 udp 1"}
            await caller.ok("call:hangup", {"call_id": third["id"]})


async def test_a_recording_whose_process_died_is_marked_lost_not_left_in_progress(calls_api: Api) -> None:
    """What a process that died mid-recording leaves: the call names it as media host and the recording
    never stops. The sweep of a live process marks it lost (410); its own recordings it leaves alone."""
    api = calls_api
    here = api.app[SERVER].realtime.process_id  # type: ignore[index]
    started = {"file": "x.mka", "started_at": utcnow(), "stopped_at": None, "bytes": None}
    calls = {}
    for host in ("4242-deadbeef", here):
        carer, *_, call_id = await connected_call(api)
        await CallSession.get_pymongo_collection().update_one(
            {"_id": ObjectId(call_id)}, {"$set": {"media_host": host, "recording": started}})
        calls[host] = (carer, call_id)
    carer, call_id = calls["4242-deadbeef"]
    for _ in range(100):  # the orphan check runs every tenth sweep (2 s here)
        _, history = await api.request("GET", "/api/calls", carer)
        recording = next(c for c in history["items"] if c["id"] == call_id)["recording"]
        if recording["lost"]:
            break
        await asyncio.sleep(0.1)
    assert recording["lost"] is True and recording["stopped_at"] and recording["bytes"] is None
    status, err = await api.request("GET", recording["url"], carer)
    assert status == 410 and err["error"]["code"] == "recording_lost"
    carer, call_id = calls[here]
    status, err = await api.request("GET", f"/api/calls/{call_id}/recording", carer)
    assert status == 409 and err["error"]["code"] == "recording_in_progress"  # still being made, here
