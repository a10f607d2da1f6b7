"""Calls: setup time, relayed-call capacity and its CPU cost, and signaling throughput of one server
process on the embedded store (SecantusDB, its own process), the rate limits raised (the figures are
the server's, not the limiter's); accounts and care-team links seeded into the store.

- setup: invite -> first audio frame (with sound) received at both ends, direct (peer-to-peer) calls
  placed one after another through the Socket.IO signaling (aiortc peers and python-socketio in this
  process); baseline: two aiortc peers exchanging offer/answer in-process with no signaling, offer ->
  first frame at both ends. REPEATS rounds of SETUP_CALLS project calls then DIRECT_CALLS direct ones:
  ``setup_p50_ms`` and ``direct_setup_p50_ms`` are the median of the rounds' p50s, with their range.
- max_relayed_calls: concurrent two-party audio calls whose media goes through the server's relay (a
  clinician joined without connecting media of their own; both participants connected to the server,
  each receiving the other through the relay). The participants' sockets and aiortc peers run in a
  separate process (bench.calls peers) from this driver, which places nothing but the clinicians' joins
  and the measuring. The number of calls steps up (1, 2, 3, then x1.3) until the frames lost at the
  receivers over WINDOW_S reach 1% in two looks in a row (no fixed top; ``top_reached``);
  ``cpu_ms_per_relayed_call_s``: CPU milliseconds per second of relayed call at the largest passing step,
  for the server, the store, the peers' process and this driver.
- signaling_events_per_s: ``call:signal`` (ICE candidates) acknowledged per second, from 20 sockets in
  10 connected calls, each relayed to the peer socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from aiortc import RTCPeerConnection

from bench._common import (
    REPEATS,
    SMOKE,
    Budget,
    CpuMeter,
    emit,
    pct,
    rounded,
    server_pids,
    start,
)
from bench._seed import Account, Seeder, server_env
from bench._servers import UNLIMITED, Helpers, embedded_store, start_server, stop
from tests.call_peers import CallPeer, Sink, ToneTrack
from tests.helpers import Sock, connect

SETUP_CALLS = 2 if SMOKE else 16  # per round
DIRECT_CALLS = 2 if SMOKE else 10  # per round
WINDOW_S = 1.0 if SMOKE else 5.0
SETTLE_S = 0.3 if SMOKE else 1.0
SIGNAL_S = 0.5 if SMOKE else 4.0
MAX_STEPS = 2 if SMOKE else 30
LOSS_LIMIT = 0.01
CANDIDATE = {"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host", "sdpMid": "0",
             "sdpMLineIndex": 0}
SIGNALING_CALLS = 2 if SMOKE else 10
TEAMS = 1 + SIGNALING_CALLS + (10 if SMOKE else 60)  # a patient, their caregiver and clinician each
DB = "bench_calls"


async def connect_call(s_caller: Sock, s_callee: Sock, callee_id: str) -> str:
    n = len(s_callee.events.of("call:incoming"))
    call = await s_caller.ok("call:invite", {"callee": callee_id})
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


async def setup_times(s_carer: Sock, s_patient: Sock, patient_id: str) -> list[float]:
    times = []
    for _ in range(SETUP_CALLS):
        caller, callee = CallPeer(s_carer, 440), CallPeer(s_patient, 660)
        t0 = time.monotonic()
        n = len(s_carer.events.of("call:accepted"))
        call_id = await connect_call(s_carer, s_patient, patient_id)
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


# ------------------------------------------------------------------------------------------------ peers process
def peers_main(conn: Any, url: str) -> None:
    asyncio.run(_peers(conn, url))


async def _peers(conn: Any, url: str) -> None:
    """The participants of the relayed calls: their sockets (invite, accept, media offer) and aiortc peers."""
    loop = asyncio.get_running_loop()
    peers: list[CallPeer] = []
    socks: list[Sock] = []
    while True:
        cmd, arg = await loop.run_in_executor(None, conn.recv)
        try:
            if cmd == "call":  # (carer token, patient token, patient id) -> call id, once connected
                carer, patient, patient_id = arg
                s_carer, s_patient = await connect(url, carer), await connect(url, patient)
                socks += [s_carer, s_patient]
                conn.send(await connect_call(s_carer, s_patient, patient_id))
            elif cmd == "media":  # the call's two participants connect to the relay (the clinician has joined)
                s_carer, s_patient = socks[-2:]
                a, b = CallPeer(s_carer, 440), CallPeer(s_patient, 660)
                peers += [a, b]
                await asyncio.gather(a.connect_relay(arg, 1), b.connect_relay(arg, 1))
                await asyncio.gather(a.heard(1, timeout=15), b.heard(1, timeout=15))
                conn.send(None)
            elif cmd == "loss":  # frames lost at the receivers over ``arg`` seconds
                await asyncio.sleep(SETTLE_S)
                heard = [sum(s.loud for s in p.sinks) for p in peers]
                sent = [p.tone.sent for p in peers]
                conn.send("window start")
                await asyncio.sleep(arg)
                conn.send("window stop")
                heard = [sum(s.loud for s in p.sinks) - h for p, h in zip(peers, heard, strict=True)]
                sent = [p.tone.sent - n for p, n in zip(peers, sent, strict=True)]
                conn.send(max(0.0, 1 - sum(heard) / max(sum(sent), 1)))  # each peer hears the other
            elif cmd == "stop":
                for p in peers:
                    with contextlib.suppress(Exception):
                        await p.close()
                for s in socks:
                    with contextlib.suppress(Exception):
                        await s.close()
                conn.send(None)
                return
        except Exception as exc:
            conn.send(exc)


async def relayed(budget: Budget, url: str, teams: list[tuple[Account, Account, Account]], groups: dict[str, Any]
                  ) -> tuple[dict[int, float], bool, int, dict[str, float | None] | None]:
    """Calls step up until the loss reaches LOSS_LIMIT: losses by calls, whether a step failed, the best
    count, and CPU ms per call-second there."""
    helpers = Helpers(peers_main, [(url,)])
    meter = CpuMeter(**groups, peers=helpers.pids)

    async def ask(cmd: str, arg: Any = None) -> Any:
        return (await helpers.ask([(cmd, arg)]))[0]

    losses: dict[int, float] = {}
    best, top_reached, cost, calls = 0, False, None, 0
    clinicians: list[Sock] = []
    target = 1
    try:
        for step in range(MAX_STEPS):
            if step and not budget.allows(WINDOW_S + 3 + 1.5 * (target - calls), f"relayed calls {target}"):
                break
            if target > len(teams):
                budget.cut.append(f"relayed calls {target}: accounts for {len(teams)} seeded")
                break
            for patient, carer, clinician in teams[calls:target]:
                call_id = await ask("call", (carer.token, patient.token, patient.id))
                s_clin = await connect(url, clinician.token)
                clinicians.append(s_clin)
                joined = await s_clin.ok("call:join", {"call_id": call_id})
                assert joined["relay"], joined
                await ask("media", call_id)
            calls = target
            for _ in range(2):  # a failing step is looked at once more: the machine may be shared
                await ask("loss", WINDOW_S)  # the peers settle, and say when their window starts
                meter.start()
                await helpers.recv()  # and when it ends
                cpu, seconds = meter.read()
                loss = (await helpers.recv())[0]
                losses[calls] = round(loss * 100, 2)
                print(f"relayed calls {calls}: {losses[calls]}% frames lost; CPU cores "
                      f"{ {k: round(v / seconds, 2) for k, v in cpu.items()} }", flush=True)
                if loss < LOSS_LIMIT:
                    break
            if loss >= LOSS_LIMIT:
                top_reached = True
                break
            best = calls
            cost = {k: rounded(v * 1000 / (seconds * calls)) for k, v in cpu.items()}
            target = max(calls + 1, round(calls * 1.3))
    finally:
        await helpers.stop()
        for s in clinicians:
            with contextlib.suppress(Exception):
                await s.close()
    return losses, top_reached, best, cost


async def signaling_rate(url: str, teams: list[tuple[Account, Account, Account]]) -> float:
    calls = []
    for patient, carer, _ in teams:
        s_carer, s_patient = await connect(url, carer.token), await connect(url, patient.token)
        calls.append((s_carer, s_patient, await connect_call(s_carer, s_patient, patient.id)))
    stop_at = time.monotonic() + SIGNAL_S
    counts = [0]

    async def pump(sock: Sock, call_id: str) -> None:
        message = {"call_id": call_id, "type": "candidate", "candidate": CANDIDATE}
        while time.monotonic() < stop_at:
            reply = await sock.call("call:signal", message)
            if reply.get("ok"):
                counts[0] += 1

    t0 = time.monotonic()
    await asyncio.gather(*(pump(s, c) for a, b, c in calls for s in (a, b)))
    rate = counts[0] / (time.monotonic() - t0)
    for a, b, c in calls:
        await a.call("call:hangup", {"call_id": c})
        await a.close()
        await b.close()
    return rate


async def measure(budget: Budget, tmp: Path) -> dict[str, Any]:
    with embedded_store(tmp / "store") as store:
        async with Seeder(store.url, DB) as seed:
            patients, carers = await seed.users("patient", TEAMS), await seed.users("caregiver", TEAMS)
            clinicians = await seed.users("clinician", TEAMS)
            await seed.link([*zip(patients, carers, strict=True), *zip(patients, clinicians, strict=True)])
        teams = list(zip(patients, carers, clinicians, strict=True))
        proc, url, _ = start_server(str(tmp / "data"), **server_env(store.url, DB), **UNLIMITED)
        try:
            setup: list[list[float]] = []
            direct: list[list[float]] = []
            patient, carer, _ = teams[0]
            s_carer, s_patient = await connect(url, carer.token), await connect(url, patient.token)
            for _ in budget.rounds(REPEATS, "setup round", reserve=60):  # the rest: signaling, relayed calls
                setup.append(await setup_times(s_carer, s_patient, patient.id))
                direct.append(await direct_times())
            await s_carer.close()
            await s_patient.close()
            events = await signaling_rate(url, teams[1:1 + SIGNALING_CALLS])
            groups = {"server": lambda: server_pids(proc.pid), "store": [store.pid], "driver": [os.getpid()]}
            losses, top_reached, best, cost = await relayed(budget, url, teams[1 + SIGNALING_CALLS:], groups)
        finally:
            stop(proc)
    return {"setup": setup, "direct": direct, "events": events, "losses": losses, "top_reached": top_reached,
            "best": best, "cost": cost}


def main() -> None:
    budget = start("calls")
    load = os.getloadavg()[0]  # the machine is shared: say how busy it was
    with tempfile.TemporaryDirectory(prefix="bench-calls-") as tmp:
        out = asyncio.run(measure(budget, Path(tmp)))
    every = [t for batch in out["setup"] for t in batch]
    emit(budget, {"setup_p50_ms": [statistics.median(b) * 1000 for b in out["setup"]],
                  "direct_setup_p50_ms": [statistics.median(b) * 1000 for b in out["direct"]],
                  "setup_p95_ms": [pct(b, 95) * 1000 for b in out["setup"]],  # type: ignore[operator]
                  "direct_setup_p95_ms": [pct(b, 95) * 1000 for b in out["direct"]]},  # type: ignore[operator]
         calls_measured=len(every), max_relayed_calls=out["best"], top_reached=out["top_reached"],
         relayed_loss_pct_by_calls=out["losses"], cpu_ms_per_relayed_call_s=out["cost"],
         signaling_events_per_s=round(out["events"]), store="embedded SecantusDB (its own process)",
         clients="setup: aiortc + python-socketio in the bench process; relayed calls: participants in a separate "
                 "process", load_avg_1m_at_start=round(load, 1))


if __name__ == "__main__":
    main()
