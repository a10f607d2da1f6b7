"""Calls: setup time, relayed-call capacity and signaling throughput of one server process.

One ``healthmate serve`` process on the embedded store (SecantusDB) with the rate limits raised
(the figures are the server's, not the limiter's); the clients (aiortc peers, python-socketio)
run in this process on the same machine, so they share its cores with the server.

- setup: invite -> first audio frame (with sound) received at both ends, direct (peer-to-peer) calls placed
  one after another through the Socket.IO signaling; p50/p95 over 50 calls. Baseline: two aiortc
  peers exchanging offer/answer in-process with no signaling, offer -> first frame at both ends.
- max_relayed_calls: the most concurrent two-party audio calls whose media goes through the
  server's relay (a clinician joined without connecting media of their own; both participants
  connected to the server, each receiving the other through the relay) with < 1% of the
  frames sent lost at the receivers over a 6 s window, stepping the number of calls up until a step fails.
- signaling_events_per_s: ``call:signal`` (ICE candidates) acknowledged per second, from 20 sockets
  in 10 connected calls, each relayed to the peer socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import statistics
import tempfile
import time
from typing import Any

from aiortc import RTCPeerConnection

from server.infra.embedded_store import free_port
from tests.call_peers import CallPeer, Sink, ToneTrack
from tests.helpers import Api, ServerProcess, Sock, User

SETUP_CALLS = 50
DIRECT_CALLS = 30
WINDOW_S = 6.0
STEPS = [1, 2, 3, 4, 6, 8, 10, 12, 16]
SIGNAL_S = 5.0
BUDGET_S = 170.0
CANDIDATE = {"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host", "sdpMid": "0",
             "sdpMLineIndex": 0}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def pair(api: Api) -> tuple[User, User, Sock, Sock]:
    patient, carer = await api.register("patient"), await api.register("caregiver")
    await api.link(patient, carer)
    return patient, carer, await api.socket(carer), await api.socket(patient)


async def connect_call(s_caller: Sock, s_callee: Sock, callee: User) -> str:
    n = len(s_callee.events.of("call:incoming"))
    call = await s_caller.ok("call:invite", {"callee": callee.id})
    await s_callee.events.wait("call:incoming", n + 1)
    await s_callee.ok("call:accept", {"call_id": call["id"]})
    return call["id"]


async def first_frames(*peers: CallPeer, timeout: float = 10) -> float:
    """When the last of ``peers`` received its first audio frame (with sound)."""
    deadline = time.monotonic() + timeout
    while not all(p.sinks for p in peers):
        if time.monotonic() > deadline:
            raise TimeoutError("no track")
        await asyncio.sleep(0.002)
    await asyncio.wait_for(asyncio.gather(*(p.sinks[0].arrived.wait() for p in peers)), timeout)
    return max(p.sinks[0].first_loud_at or 0.0 for p in peers)


async def setup_times(api: Api) -> list[float]:
    patient, _, s_carer, s_patient = await pair(api)
    times = []
    for _ in range(SETUP_CALLS):
        caller, callee = CallPeer(s_carer, 440), CallPeer(s_patient, 660)
        t0 = time.monotonic()
        n = len(s_carer.events.of("call:accepted"))
        call_id = await connect_call(s_carer, s_patient, patient)
        await s_carer.events.wait("call:accepted", n + 1)
        await asyncio.gather(caller.offer(call_id), callee.answer(call_id))
        times.append((await first_frames(caller, callee)) - t0)
        await s_carer.ok("call:hangup", {"call_id": call_id})
        await caller.close()
        await callee.close()
    return times


async def direct_times() -> list[float]:
    times = []
    for _ in range(DIRECT_CALLS):
        a, b = RTCPeerConnection(), RTCPeerConnection()
        sinks: list[Sink] = []
        both = asyncio.Event()

        def on_track(track: Any, sinks: list[Sink] = sinks, both: asyncio.Event = both) -> None:
            sink = Sink(track)
            sink.task = asyncio.create_task(sink.run())
            sinks.append(sink)
            if len(sinks) == 2:
                both.set()

        a.on("track", on_track)
        b.on("track", on_track)
        t0 = time.monotonic()
        a.addTrack(ToneTrack(440))
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        b.addTrack(ToneTrack(660))
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)
        await asyncio.wait_for(both.wait(), 10)
        await asyncio.wait_for(asyncio.gather(*(s.arrived.wait() for s in sinks)), 10)
        times.append(max(s.first_loud_at or 0.0 for s in sinks) - t0)
        for s in sinks:
            s.task.cancel()  # type: ignore[union-attr]
        await a.close()
        await b.close()
    return times


async def relayed_loss(api: Api, calls: int) -> float:
    """Set up ``calls`` relayed calls, measure the share of frames lost at the receivers, end them."""
    peers: list[CallPeer] = []
    ended: list[tuple[Sock, str]] = []
    try:
        for _ in range(calls):
            patient, _, s_carer, s_patient = await pair(api)
            clinician = await api.register("clinician")
            await api.link(patient, clinician)
            s_clin = await api.socket(clinician)
            call_id = await connect_call(s_carer, s_patient, patient)
            joined = await s_clin.ok("call:join", {"call_id": call_id})
            a, b = CallPeer(s_carer, 440), CallPeer(s_patient, 660)
            peers += [a, b]
            assert joined["relay"]
            # One incoming slot each: the clinician's own media is not connected, so it relays the two.
            await asyncio.gather(a.connect_relay(call_id, 1), b.connect_relay(call_id, 1))
            ended.append((s_carer, call_id))
        for p in peers:
            await p.heard(1, timeout=15)
        await asyncio.sleep(1.0)  # settle
        heard = [sum(s.loud for s in p.sinks) for p in peers]
        sent = [p.tone.sent for p in peers]
        await asyncio.sleep(WINDOW_S)
        heard = [sum(s.loud for s in p.sinks) - h for p, h in zip(peers, heard, strict=True)]
        sent = [p.tone.sent - n for p, n in zip(peers, sent, strict=True)]
        return max(0.0, 1 - sum(heard) / sum(sent))  # each peer hears the other: totals compare
    finally:
        for sock, call_id in ended:
            with contextlib.suppress(Exception):
                await sock.call("call:hangup", {"call_id": call_id}, timeout=30)
        for p in peers:
            await p.close()


async def signaling_rate(api: Api) -> float:
    calls = []
    for _ in range(10):
        patient, _, s_carer, s_patient = await pair(api)
        calls.append((s_carer, s_patient, await connect_call(s_carer, s_patient, patient)))
    stop = time.monotonic() + SIGNAL_S
    counts = [0]

    async def pump(sock: Sock, call_id: str) -> None:
        message = {"call_id": call_id, "type": "candidate", "candidate": CANDIDATE}
        while time.monotonic() < stop:
            reply = await sock.call("call:signal", message)
            if reply.get("ok"):
                counts[0] += 1

    t0 = time.monotonic()
    await asyncio.gather(*(pump(s, c) for a, b, c in calls for s in (a, b)))
    rate = counts[0] / (time.monotonic() - t0)
    for a, _, c in calls:
        await a.call("call:hangup", {"call_id": c})
    return rate


async def main() -> dict[str, Any]:
    started = time.monotonic()
    load = os.getloadavg()[0]  # the machine is shared: say how busy it was
    data = tempfile.mkdtemp(prefix="bench-calls-")
    for key in [k for k in os.environ if k.startswith("HEALTHMATE_")]:
        del os.environ[key]  # the server gets exactly the settings below
    env = dict(HEALTHMATE_DATA_DIR=data, HEALTHMATE_LOG_LEVEL="WARNING", HEALTHMATE_JWT_SECRET="b" * 48,
               HEALTHMATE_EVENT_RATE_PER_S="1000000", HEALTHMATE_EVENT_BURST="1000000",
               HEALTHMATE_USER_EVENT_RATE_PER_S="1000000", HEALTHMATE_USER_EVENT_BURST="1000000",
               HEALTHMATE_CONNECT_RATE_PER_S="1000000", HEALTHMATE_CONNECT_BURST="1000000")
    server = await ServerProcess(env, free_port()).start(timeout=60)
    try:
        async with Api(server.url) as api:
            setup = await setup_times(api)
            direct = await direct_times()
            events = await signaling_rate(api)
            best, losses = 0, {}
            for n in STEPS:
                if time.monotonic() - started > BUDGET_S - 25:
                    break
                loss = await relayed_loss(api, n)
                losses[n] = round(loss * 100, 2)
                print(f"relayed calls {n}: {losses[n]}% frames lost", flush=True)
                if loss >= 0.01:
                    break
                best = n
    finally:
        await server.stop()
        shutil.rmtree(data, ignore_errors=True)
    return {"bench": "calls", "setup_p50_ms": round(statistics.median(setup) * 1000, 1),
            "setup_p95_ms": round(pct(setup, 0.95) * 1000, 1),
            "direct_setup_p50_ms": round(statistics.median(direct) * 1000, 1),
            "direct_setup_p95_ms": round(pct(direct, 0.95) * 1000, 1),
            "max_relayed_calls": best, "relayed_loss_pct_by_calls": losses,
            "signaling_events_per_s": round(events), "calls_measured": len(setup),
            "store": "secantusdb (embedded)", "clients": "aiortc + python-socketio in the bench process",
            "cpus": os.cpu_count(), "load_avg_1m_at_start": round(load, 1)}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
