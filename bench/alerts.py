"""Alert fan-out and sustained blood-pressure load, on two server processes sharing one Redis and
the embedded store (SecantusDB).

1. Fan-out: one patient, 1,000 caregivers linked to them, connected over websockets and spread over
   the two processes (999 held by load-generator processes, one by this process, which acknowledges
   each alert so the next crisis raises a new one). 20 crisis readings; for each, the time from the
   reading's ack to the last recipient's ``alert:new`` (clients confirm with ``alert:received``).
2. Sustained: 500 patients each sending one normal reading per second for ``SUSTAIN_S``; throughput and
   ack latency.

Accounts, sessions and links are seeded straight into the store (1,500 Argon2 registrations would
dominate the run); everything measured goes through the servers. Prints one JSON line last."""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import socketio

RECIPIENTS = int(os.environ.get("BENCH_RECIPIENTS", 1000))
ALERTS = int(os.environ.get("BENCH_ALERTS", 20))
PATIENTS = int(os.environ.get("BENCH_PATIENTS", 500))
SUSTAIN_S = int(os.environ.get("BENCH_SUSTAIN_S", 15))
CALL_TIMEOUT_S = 10
LOADERS = 4
SECRET = "bench-secret-" + "b" * 40
CRISIS = {"systolic": 192, "diastolic": 124, "pulse": 101}


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] if ordered else float("nan")


def expect(results: Any, kind: str, timeout: float) -> tuple[Any, ...]:
    """The next message of ``kind`` from the load generators (others, e.g. late duplicates, skipped)."""
    while True:
        item = results.get(timeout=timeout)
        if item[0] == kind:
            return item


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# --- load generator processes ------------------------------------------------------------------------

async def _connect(url: str, token: str, device: str, on: dict[str, Any] | None = None) -> socketio.AsyncClient:
    client = socketio.AsyncClient(reconnection=False)
    for event, handler in (on or {}).items():
        client.on(event, handler)
    await client.connect(url, auth={"token": token, "device_id": device}, transports=["websocket"], wait_timeout=60)
    return client


async def _gather_bounded(coros: list[Any], limit: int = 25) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(c: Any) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


async def _loader(carers: list[tuple[str, str]], patients: list[tuple[str, str]], cmds: Any, results: Any) -> None:
    loop = asyncio.get_running_loop()
    clients: list[socketio.AsyncClient] = []

    def on_alert_for(client_ref: list[socketio.AsyncClient]) -> Any:
        async def on_alert(data: dict[str, Any]) -> None:
            results.put(("alert", data["id"], time.time()))
            await client_ref[0].emit("alert:received", {"alert_id": data["id"]})
        return on_alert

    async def carer(url: str, token: str, i: int) -> None:
        ref: list[socketio.AsyncClient] = []
        client = socketio.AsyncClient(reconnection=False)
        ref.append(client)
        client.on("alert:new", on_alert_for(ref))
        await client.connect(url, auth={"token": token, "device_id": f"carer-{os.getpid()}-{i}"},
                             transports=["websocket"], wait_timeout=60)
        clients.append(client)

    await _gather_bounded([carer(u, t, i) for i, (u, t) in enumerate(carers)])
    results.put(("connected", len(clients)))
    cmd = await loop.run_in_executor(None, cmds.get)  # ("readings", start_at)
    psocks = await _gather_bounded([_connect(u, t, f"patient-{i}") for i, (u, t) in enumerate(patients)])
    results.put(("patients", len(psocks)))
    start_at = (await loop.run_in_executor(None, cmds.get))[1]
    latencies: list[float] = []
    errors = 0
    in_window = 0  # readings acknowledged before the run's end (the throughput)

    async def patient(client: socketio.AsyncClient) -> None:
        """One reading a second while the run lasts; a late reply delays the next (at most one in flight)."""
        nonlocal errors, in_window
        await asyncio.sleep(max(0.0, start_at - time.time()) + random.random())
        end = start_at + SUSTAIN_S
        next_at = time.time()
        while time.time() < end:
            t0 = time.perf_counter()
            try:
                reply = await client.call("bp:add", {"systolic": random.randint(105, 150), "diastolic": 75,
                                                     "pulse": 70, "measured_at": now_iso()}, timeout=CALL_TIMEOUT_S)
                if reply.get("ok"):
                    latencies.append(time.perf_counter() - t0)
                    in_window += time.time() <= end
                else:
                    errors += 1
            except Exception:
                errors += 1
            next_at = max(next_at + 1.0, time.time())
            await asyncio.sleep(max(0.0, next_at - time.time()))

    await asyncio.gather(*(patient(c) for c in psocks))
    results.put(("readings", latencies, errors, in_window))
    for c in clients + psocks:
        await c.disconnect()
    del cmd


def loader_main(carers: list[tuple[str, str]], patients: list[tuple[str, str]], cmds: Any, results: Any) -> None:
    asyncio.run(_loader(carers, patients, cmds, results))


# --- infrastructure -----------------------------------------------------------------------------------

def start_server(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    log = os.environ.get("BENCH_SERVER_LOG")  # keep the servers' output, for looking into a run
    out = open(f"{log}.{port}", "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve"], env={**env, "HEALTHMATE_PORT": str(port)},
                            stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return proc
        except OSError:
            time.sleep(0.1)
    raise SystemExit("server did not start")


async def seed(store_url: str, db: str) -> tuple[str, str, list[str], list[str]]:
    """One crisis patient with RECIPIENTS caregivers, and PATIENTS more patients; returns access tokens."""
    from beanie import PydanticObjectId

    from server.app import DOCUMENTS
    from server.care.documents import AuthSession, Link, User
    from server.care.security import TokenService, hash_password
    from server.core.documents import utcnow
    from server.infra.store import init_documents, make_client

    client = make_client(store_url)
    await init_documents(client, db, DOCUMENTS)
    tokens = TokenService(SECRET, "healthmate", 3600, 7200)
    password = await hash_password("bench-passphrase-123")
    users = [User(id=PydanticObjectId(), email="p0@bench.example", password_hash=password, name="Ana",
                  role="patient")]
    users += [User(id=PydanticObjectId(), email=f"c{i}@bench.example", password_hash=password, name=f"Carer {i}",
                   role="caregiver") for i in range(RECIPIENTS)]
    users += [User(id=PydanticObjectId(), email=f"p{i + 1}@bench.example", password_hash=password,
                   name=f"Patient {i}", role="patient") for i in range(PATIENTS)]
    await User.insert_many(users)
    sessions = [AuthSession(id=PydanticObjectId(), user_id=u.id, current_jti="x",  # type: ignore[arg-type]
                            expires_at=utcnow().replace(year=utcnow().year + 1)) for u in users]
    await AuthSession.insert_many(sessions)
    patient = users[0]
    await Link.insert_many([Link(id=Link.key(patient.id, u.id), patient_id=patient.id,  # type: ignore[arg-type]
                                 member_id=u.id, member_role="caregiver")  # type: ignore[arg-type]
                            for u in users[1:RECIPIENTS + 1]])
    access = [tokens.issue("access", str(u.id), str(s.id), role=u.role)[0]
              for u, s in zip(users, sessions, strict=True)]
    await client.close()
    return str(patient.id), access[0], access[1:RECIPIENTS + 1], access[RECIPIENTS + 1:]


async def fanout(urls: list[str], patient_token: str, acker_token: str, results: Any) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    stop = False

    def pump() -> None:
        while not stop:
            try:
                item = results.get(timeout=0.2)
            except queue.Empty:
                continue
            loop.call_soon_threadsafe(inbox.put_nowait, item)

    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()
    own: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    acker = socketio.AsyncClient(reconnection=False)

    @acker.on("alert:new")
    async def _own(data: dict[str, Any]) -> None:
        await inbox.put(("alert", data["id"], time.time()))
        await own.put(data)

    await acker.connect(urls[0], auth={"token": acker_token, "device_id": "acker"}, transports=["websocket"])
    patient = await _connect(urls[0], patient_token, "patient-phone")
    worst: list[float] = []
    every: list[float] = []
    stray = 0
    for _ in range(ALERTS):
        t_send = time.time()
        reply = await patient.call("bp:add", {**CRISIS, "measured_at": now_iso()}, timeout=30)
        t_ack = time.time()
        assert reply["ok"], reply
        alert = await asyncio.wait_for(own.get(), 30)
        times: list[float] = []
        while len(times) < RECIPIENTS:
            kind, alert_id, t = await asyncio.wait_for(inbox.get(), 60)
            if kind == "alert" and alert_id == alert["id"]:
                times.append(t)
            else:
                stray += 1  # a second copy of an earlier alert would show here
        worst.append(max(0.0, max(times) - t_ack) * 1000)  # 0 when everyone had it before the ack
        every += [(t - t_send) * 1000 for t in times]
        await acker.call("alert:ack", {"alert_id": alert["id"]}, timeout=30)
        await asyncio.sleep(0.25)  # let the acknowledgement settle
    await patient.disconnect()
    await acker.disconnect()
    stop = True
    pumper.join()
    return {"fanout_p50_ms": round(pct(worst, 50), 1), "fanout_p99_ms": round(pct(worst, 99), 1),
            "recipient_from_send_p50_ms": round(pct(every, 50), 1),
            "recipient_from_send_p99_ms": round(pct(every, 99), 1), "stray_deliveries": stray}


async def run(tmp: Path, procs: list[subprocess.Popen[bytes]], loaders: list[Any]) -> dict[str, Any]:
    from server.infra.embedded_store import EmbeddedStore, free_port

    store = EmbeddedStore(tmp / "store")
    store_url = await store.start()
    try:
        redis_port = free_port()
        procs.append(subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(redis_port),
                                       "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                                      stdout=subprocess.DEVNULL))
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHMATE_")}
        env.update(HEALTHMATE_MONGODB_URL=store_url, HEALTHMATE_MONGODB_DB="bench_alerts",
                   HEALTHMATE_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0", HEALTHMATE_JWT_SECRET=SECRET,
                   HEALTHMATE_DATA_DIR=str(tmp), HEALTHMATE_LOG_LEVEL="WARNING",
                   HEALTHMATE_CONNECT_RATE_PER_S="100000", HEALTHMATE_CONNECT_BURST="100000")
        ports = [free_port(), free_port()]
        servers = [await asyncio.to_thread(start_server, env, p) for p in ports]
        procs += servers
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        _, patient_token, carer_tokens, patient_tokens = await seed(store_url, "bench_alerts")
        ctx = mp.get_context("spawn")
        results = ctx.Queue()
        cmds = [ctx.Queue() for _ in range(LOADERS)]
        held = carer_tokens[1:]
        for i in range(LOADERS):
            carers = [(urls[j % 2], t) for j, t in enumerate(held[i::LOADERS])]
            patients = [(urls[j % 2], t) for j, t in enumerate(patient_tokens[i::LOADERS])]
            loaders.append(ctx.Process(target=loader_main, args=(carers, patients, cmds[i], results)))
            loaders[-1].start()
        t0 = time.time()
        connected = 0
        for _ in range(LOADERS):
            connected += (await asyncio.to_thread(expect, results, "connected", 180))[1]
        print(f"{connected + 1} caregivers connected in {time.time() - t0:.1f}s", flush=True)
        figures = await fanout(urls, patient_token, carer_tokens[0], results)
        rss = [round(rss_mb(s.pid)) for s in servers]
        print(f"fan-out to {RECIPIENTS}: last recipient after the ack p50 {figures['fanout_p50_ms']} ms, "
              f"p99 {figures['fanout_p99_ms']} ms; server RSS {rss} MB", flush=True)
        for q in cmds:
            q.put(("readings",))
        for _ in range(LOADERS):
            await asyncio.to_thread(expect, results, "patients", 180)
        start_at = time.time() + 2
        for q in cmds:
            q.put(("go", start_at))
        latencies: list[float] = []
        errors = done = 0
        for _ in range(LOADERS):
            item = await asyncio.to_thread(expect, results, "readings", SUSTAIN_S + CALL_TIMEOUT_S + 60)
            latencies += item[1]
            errors += item[2]
            done += item[3]
        per_s = done / SUSTAIN_S
        print(f"sustained: {done} readings acknowledged within {SUSTAIN_S}s ({len(latencies)} in all) from {PATIENTS} "
              f"patients ({errors} errors), "
              f"ack p50 {pct(latencies, 50) * 1000:.1f} ms p99 {pct(latencies, 99) * 1000:.1f} ms", flush=True)
        return {"bench": "alerts", "recipients": RECIPIENTS, **figures, "readings_per_s": round(per_s, 1),
                "ack_p50_ms": round(pct(latencies, 50) * 1000, 1), "ack_p99_ms": round(pct(latencies, 99) * 1000, 1),
                "reading_errors": errors, "server_rss_mb": rss, "processes": 2, "store": "embedded SecantusDB"}
    finally:
        for p in loaders:
            await asyncio.to_thread(p.join, 30)
            if p.is_alive():
                p.kill()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                proc.kill()
        await store.stop()


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-alerts-"))
    try:
        out = asyncio.run(run(tmp, [], []))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
