"""Real WebRTC media: two aiortc peers signal through the project's Socket.IO events and hear each
other; a clinician joins and the server relays everyone's audio so all three hear the other two (also
when their sockets are on two server processes); consented recording."""

from __future__ import annotations

import asyncio
import io
import stat
from datetime import timedelta
from pathlib import Path

import av
from bson import ObjectId

from server.app import SERVER
from server.core.documents import utcnow
from server.infra.embedded_store import EmbeddedStore
from tests.call_peers import CallPeer
from tests.helpers import Api, process_env, server_processes


async def test_two_peers_exchange_audio_then_a_clinician_joins_through_the_relay(api: Api) -> None:
    patient, carer, clinician = [await api.register(r) for r in ("patient", "caregiver", "clinician")]
    await api.link(patient, carer)
    await api.link(patient, clinician)
    s_carer, s_patient, s_clin = await api.socket(carer), await api.socket(patient), await api.socket(clinician)

    call = await s_carer.ok("call:invite", {"callee": patient.id, "media": "audio"})
    await s_patient.events.wait("call:incoming")
    await s_patient.ok("call:accept", {"call_id": call["id"]})
    await s_carer.events.wait("call:accepted")
    caller, callee = CallPeer(s_carer, 440), CallPeer(s_patient, 660)
    try:
        await asyncio.gather(caller.offer(call["id"]), callee.answer(call["id"]))
        # Real audio both ways, peer to peer.
        (heard_by_caller,) = await caller.heard(1)
        (heard_by_callee,) = await callee.heard(1)
        await asyncio.sleep(0.5)
        assert heard_by_caller.loud > 5 and heard_by_callee.loud > 5

        # The clinician may not relay media before joining, and a stranger may not join.
        stranger = await api.socket(await api.register("clinician"))
        reply = await stranger.call("call:join", {"call_id": call["id"]})
        assert reply["error"]["code"] == "forbidden"
        reply = await s_clin.call("call:media-offer", {"call_id": call["id"], "sdp": "v=0"})
        assert reply["error"]["code"] == "not_found"
        reply = await s_carer.call("call:media-offer", {"call_id": call["id"], "sdp": "v=0"})
        assert reply["error"]["code"] == "not_relayed"

        joined = await s_clin.ok("call:join", {"call_id": call["id"]})
        assert joined["relay"] is True and joined["slots"] == 2
        # A fourth person (another of the patient's clinicians) does not fit; a linked caregiver may not join.
        for role, code in (("clinician", "call_full"), ("caregiver", "forbidden")):
            other = await api.register(role)
            await api.link(patient, other)
            reply = await (await api.socket(other)).call("call:join", {"call_id": call["id"]})
            assert reply["error"]["code"] == code, reply
        for sock in (s_carer, s_patient):
            (relay,) = await sock.events.wait("call:relay")
            assert relay["joined"]["id"] == clinician.id and relay["slots"] == 2
        reply = await s_clin.call("call:media-offer", {"call_id": call["id"], "sdp": "not sdp"})
        assert reply["error"]["code"] == "invalid_sdp"
        doctor = CallPeer(s_clin, 880)
        # Everyone connects to the server; each hears the other two.
        await asyncio.gather(caller.connect_relay(call["id"], 2), callee.connect_relay(call["id"], 2),
                             doctor.connect_relay(call["id"], 2))
        for peer in (doctor, caller, callee):
            assert len(await peer.heard(2, timeout=15)) == 2
        room = api.app[SERVER].calls.host.rooms[call["id"]]  # type: ignore[union-attr,index]
        forwarded = room.stats()
        assert forwarded[clinician.id][carer.id] > 0 and forwarded[clinician.id][patient.id] > 0
        assert forwarded[carer.id][clinician.id] > 0 and forwarded[patient.id][carer.id] > 0

        # The clinician leaves: the two go on; hanging up closes the relay.
        await s_clin.ok("call:leave", {"call_id": call["id"]})
        ended = await s_carer.ok("call:hangup", {"call_id": call["id"]})
        assert [t["action"] for t in ended["transitions"]] == ["invite", "accept", "join", "leave", "hangup"]
        for _ in range(50):
            if call["id"] not in api.app[SERVER].calls.host.rooms:  # type: ignore[union-attr]
                break
            await asyncio.sleep(0.05)
        assert call["id"] not in api.app[SERVER].calls.host.rooms  # type: ignore[union-attr]
        _, history = await api.request("GET", "/api/calls", clinician)
        assert [c["id"] for c in history["items"]] == [call["id"]]
    finally:
        for peer in (caller, callee):
            await peer.close()
        if "doctor" in locals():
            await doctor.close()


async def test_recording_only_with_both_consents_downloadable_by_the_participants_and_retained(api: Api) -> None:
    patient, carer, clinician = [await api.register(r) for r in ("patient", "caregiver", "clinician")]
    await api.link(patient, carer)
    await api.link(patient, clinician)
    s_carer, s_patient = await api.socket(carer), await api.socket(patient)
    call = await s_carer.ok("call:invite", {"callee": patient.id})
    await s_patient.events.wait("call:incoming")
    await s_patient.ok("call:accept", {"call_id": call["id"]})
    outsider = await api.socket(clinician)
    reply = await outsider.call("call:consent", {"call_id": call["id"], "record": True})
    assert reply["error"]["code"] == "not_found"
    one = await s_carer.ok("call:consent", {"call_id": call["id"], "record": True})
    assert one["consent"] == {carer.id: True} and one["recording"] is None
    await asyncio.sleep(0.2)
    assert s_patient.events.of("call:relay") == []  # one consent records nothing
    both = await s_patient.ok("call:consent", {"call_id": call["id"], "record": True})
    assert both["recording"]["url"] == f"/api/calls/{call['id']}/recording"
    for sock in (s_carer, s_patient):
        (relay,) = await sock.events.wait("call:relay")
        assert relay["reason"] == "recording"
    caller, callee = CallPeer(s_carer, 440), CallPeer(s_patient, 660)
    try:
        await asyncio.gather(caller.connect_relay(call["id"], relay["slots"]),
                             callee.connect_relay(call["id"], relay["slots"]))
        await caller.heard(1)
        await callee.heard(1)
        await asyncio.sleep(1.5)
        status, err = await api.request("GET", both["recording"]["url"], patient)
        assert status == 409 and err["error"]["code"] == "recording_in_progress"
        local = api.app[SERVER].calls.recordings.path(call["id"])  # type: ignore[index]
        assert stat.S_IMODE(local.stat().st_mode) == 0o600 and stat.S_IMODE(local.parent.stat().st_mode) == 0o700
        # The patient withdraws consent: the recording stops, the call goes on.
        withdrawn = await s_patient.ok("call:consent", {"call_id": call["id"], "record": False})
        assert withdrawn["state"] == "active" and withdrawn["consent"][patient.id] is False
        for _ in range(100):
            _, history = await api.request("GET", "/api/calls", patient)
            if history["items"][0]["recording"]["stopped_at"]:
                break
            await asyncio.sleep(0.05)
        assert history["items"][0]["state"] == "active" and history["items"][0]["recording"]["bytes"] > 0
        await s_carer.ok("call:hangup", {"call_id": call["id"]})
    finally:
        await caller.close()
        await callee.close()
    for _ in range(100):
        _, history = await api.request("GET", "/api/calls", patient)
        if history["items"][0]["recording"]["stopped_at"]:
            break
        await asyncio.sleep(0.05)
    recording = history["items"][0]["recording"]
    assert recording["bytes"] > 0
    for user in (clinician, await api.register("patient")):  # linked but not in the call, or a stranger
        status, err = await api.request("GET", recording["url"], user)
        assert status == 404 and err["error"]["code"] == "not_found"
    status, body = await api.request("GET", recording["url"], carer)
    assert status == 200 and len(body) == recording["bytes"]
    with av.open(io.BytesIO(body)) as container:
        audio = container.streams.audio
        assert len(audio) == 2  # both participants
        decoded = {s.index: 0 for s in audio}
        for packet in container.demux(*audio):
            decoded[packet.stream.index] += len(packet.decode())
    assert all(n > 25 for n in decoded.values()), decoded  # each side: more than half a second of sound
    # The finished file lives in the store (GridFS), not on this process's disk: any replica serves it.
    calls = api.app[SERVER].calls  # type: ignore[index]
    assert not calls.recordings.path(call["id"]).exists()
    stored = await calls.recordings.bucket().find({"_id": ObjectId(call["id"])}).to_list()
    assert [f.length for f in stored] == [recording["bytes"]]
    # A player seeking asks for byte ranges.
    status, part = await api.request("GET", recording["url"], carer, headers={"Range": "bytes=100-199"})
    assert status == 206 and part == body[100:200]
    status, tail = await api.request("GET", recording["url"], carer, headers={"Range": "bytes=-50"})
    assert status == 206 and tail == body[-50:]
    status, err = await api.request("GET", recording["url"], carer,
                                    headers={"Range": f"bytes={len(body)}-"})
    assert status == 416 and err["error"]["code"] == "range_not_satisfiable"
    # Retention deletes the call and its recording together.
    assert await calls.recordings.apply_retention(utcnow() + timedelta(days=1)) >= 1
    assert await calls.recordings.bucket().find({"_id": ObjectId(call["id"])}).to_list() == []
    _, history = await api.request("GET", "/api/calls", patient)
    assert history["items"] == []


async def test_relay_when_the_members_are_on_different_processes(store: EmbeddedStore, redis_url: str,
                                                                  tmp_path: Path) -> None:
    env = process_env(store.url, tmp_path, redis_url)
    async with server_processes(env, env) as (one, two):
        peers: list[CallPeer] = []
        try:
            async with Api(one.url, operator_env=env) as api1, Api(two.url) as api2:
                patient, carer, clinician = [await api1.register(r) for r in ("patient", "caregiver", "clinician")]
                await api1.link(patient, carer)
                await api1.link(patient, clinician)
                s_carer, s_patient, s_clin = await api1.socket(carer), await api2.socket(patient), await api1.socket(
                    clinician)
                call = await s_carer.ok("call:invite", {"callee": patient.id})
                await s_patient.events.wait("call:incoming")
                await s_patient.ok("call:accept", {"call_id": call["id"]})
                joined = await s_clin.ok("call:join", {"call_id": call["id"]})  # process one serves the media
                await s_patient.events.wait("call:relay")
                peers = [CallPeer(s_carer, 440), CallPeer(s_patient, 660), CallPeer(s_clin, 880)]
                # The patient's offer reaches process two and is answered by process one's relay.
                await asyncio.gather(*(p.connect_relay(call["id"], joined["slots"]) for p in peers))
                for peer in peers:
                    assert len(await peer.heard(2, timeout=20)) == 2
                await s_patient.ok("call:hangup", {"call_id": call["id"]})
                await s_clin.events.wait("call:ended")
        finally:
            for peer in peers:
                await peer.close()
