"""Crisis alerts end to end, at idle and under sustained blood-pressure load, on two server processes
sharing one Redis and the embedded store (SecantusDB).

One crisis patient with RECIPIENTS caregivers linked, connected over websockets and spread over the
two processes (held by LOADERS load-generator processes, bench._sio, each confirming every alert with
``alert:received``, as the app does; one caregiver, in this process, acknowledges each alert so that
the next crisis reading raises a new one), and PATIENTS more patients who send normal readings.

Each round (REPEATS, each a baseline and a headline configuration):
1. capacity: readings/s (``bp:add`` from the PATIENTS patients, offered at a fixed rate, each patient
   with at most one reading in flight) stepped up x1.5 until the ack p99 reaches 1 s or under 95% of the
   offered readings are acknowledged, then once between the last good step and the failing one;
   ``capacity_readings_per_s`` = the readings acknowledged per second at the best step that kept the ack
   p99 < 1 s (the first round starts at CAPACITY_FROM; later ones a step below the last capacity;
   ``capacity_top_reached``: every search found a failing step, rather than stopping on the budget);
2. idle: ALERTS_PER_ROUND crisis readings one after another; for each, from the crisis reading's send to
   the last of the RECIPIENTS caregivers' sockets receiving ``alert:new`` (``e2e_p99_ms_idle``: the p99
   over the round's alerts; ``e2e_p99_ms_idle_all``: over all rounds' alerts, >= 100);
3. load: the same while the patients send readings at 70% of the round's capacity (``e2e_p99_ms_load``).
Costs: CPU per acknowledged reading at capacity and per alert at idle (servers with Redis, store,
load generators) and the servers' store commands per reading and per alert. Accounts and links are
seeded into the store (RECIPIENTS Argon2 registrations would dominate the run); everything measured
goes through the servers."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import random
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench._common import (
    REPEATS,
    SMOKE,
    Budget,
    CpuMeter,
    emit,
    pct,
    per_op_us,
    rounded,
    server_pids,
    start,
)
from bench._seed import Account, Seeder, server_env
from bench._servers import Helpers, Window, embedded_store, redis_server, spawn_server, stop, wait_ready
from bench._sio import SioClient

RECIPIENTS = int(os.environ.get("BENCH_ALERTS_RECIPIENTS", 20 if SMOKE else 1000))  # overridable for a quick try
PATIENTS = 10 if SMOKE else 200
ALERTS_PER_ROUND = 2 if SMOKE else 34  # x 3 rounds: >= 100 alerts per configuration
LOADERS = 2
STEP_S = 0.7 if SMOKE else 6.0
CAPACITY_FROM = 10.0 if SMOKE else 60.0
MAX_STEPS = 1 if SMOKE else 30
ALERTS_RESERVE_S = 40.0  # for the two batches of alerts after a capacity search
ACK_LIMIT_S = 1.0
LOAD_SHARE = 0.7
CRISIS = {"systolic": 192, "diastolic": 124, "pulse": 101}
DB = "bench_alerts"


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


# --- load-generator processes: caregivers' sockets, and patients sending readings --------------------------------
def loader_main(conn: Any, carers: list[tuple[str, str]], patients: list[tuple[str, str]]) -> None:
    asyncio.run(_loader(conn, carers, patients))


async def _loader(conn: Any, carers: list[tuple[str, str]], patients: list[tuple[str, str]]) -> None:
    loop = asyncio.get_running_loop()
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    seen: dict[str, list[float]] = {}  # alert id -> receive times
    everyone: dict[str, asyncio.Event] = collections.defaultdict(asyncio.Event)  # alert id -> all have it
    sem = asyncio.Semaphore(20)
    tasks: set[asyncio.Task[Any]] = set()

    async def connect(url: str, token: str, device: str, carer: bool) -> SioClient:
        client = SioClient(http)
        if carer:
            def on_alert(alert: dict[str, Any], client: SioClient = client) -> None:
                seen.setdefault(alert["id"], []).append(time.time())
                if len(seen[alert["id"]]) == len(carers):
                    everyone[alert["id"]].set()
                task = asyncio.create_task(client.emit("alert:received", {"alert_id": alert["id"]}))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            client.on("alert:new", on_alert)
        async with sem:
            await client.connect(url, {"token": token, "device_id": device})
        return client

    pid = os.getpid()
    socks = await asyncio.gather(*(connect(u, t, f"carer-{pid}-{i}", True) for i, (u, t) in enumerate(carers)))
    psocks = await asyncio.gather(*(connect(u, t, f"patient-{pid}-{i}", False) for i, (u, t) in enumerate(patients)))
    conn.send(("connected", len(socks) + len(psocks)))
    load: asyncio.Task[dict[str, Any]] | None = None
    stopping = asyncio.Event()

    async def readings(rate: float) -> dict[str, Any]:
        """Each patient: one normal reading every len(psocks)/rate s, at most one in flight."""
        interval = len(psocks) / rate
        acks: list[float] = []
        errors = sent = 0

        async def patient(client: SioClient) -> None:
            nonlocal errors, sent
            next_at = time.monotonic() + random.random() * interval
            while not stopping.is_set():
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                if stopping.is_set():
                    break
                t0 = time.perf_counter()
                sent += 1
                try:
                    reply = await client.call("bp:add", {"systolic": random.randint(105, 150), "diastolic": 75,
                                                         "pulse": 70, "measured_at": now_iso()}, timeout=10)
                    if reply.get("ok"):
                        acks.append(time.perf_counter() - t0)
                    else:
                        errors += 1
                except Exception:
                    errors += 1
                next_at = max(next_at + interval, time.monotonic())

        await asyncio.gather(*(patient(c) for c in psocks))
        return {"acks": acks, "errors": errors, "sent": sent}

    while True:
        cmd, *args = await loop.run_in_executor(None, conn.recv)
        if cmd == "alert":  # when every caregiver here has it (or the timeout): (count, latest receive time)
            alert_id, timeout = args
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(everyone[alert_id].wait(), timeout)
            everyone.pop(alert_id, None)
            times = seen.pop(alert_id, [])
            conn.send(("alert", len(times), max(times, default=None)))
        elif cmd == "load":  # start readings at this rate (per loader)
            stopping.clear()
            load = asyncio.create_task(readings(args[0]))
            conn.send(("load", None))
        elif cmd == "unload":
            stopping.set()
            conn.send(("unload", await load if load else None))
            load = None
        elif cmd == "stop":
            await asyncio.gather(*(c.disconnect() for c in [*socks, *psocks]), return_exceptions=True)
            await http.close()
            conn.send(("stopped",))
            return


def loaders(urls: list[str], carers: list[Account], patients: list[Account]) -> Helpers:
    """LOADERS processes, each with its share of the caregivers and the patients, spread over the servers."""
    return Helpers(loader_main, [([(urls[j % 2], a.token) for j, a in enumerate(carers[i::LOADERS])],
                                  [(urls[j % 2], a.token) for j, a in enumerate(patients[i::LOADERS])])
                                 for i in range(LOADERS)])


# --- the measuring process -----------------------------------------------------------------------------------------
class Bench:
    def __init__(self, urls: list[str], loaders: Helpers, window: Window, budget: Budget) -> None:
        self.urls, self.loaders, self.window, self.budget = urls, loaders, window, budget
        self.own: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def connect(self, http: aiohttp.ClientSession, patient: Account, acker: Account) -> None:
        self.acker = SioClient(http)
        self.acker.on("alert:new", lambda alert: self.own.put_nowait({**alert, "at": time.time()}))
        await self.acker.connect(self.urls[0], {"token": acker.token, "device_id": "acker"})
        self.patient = SioClient(http)
        await self.patient.connect(self.urls[1], {"token": patient.token, "device_id": "patient-phone"})

    async def alert(self) -> float:
        """One crisis reading; ms from its send to the last recipient's ``alert:new``."""
        t_send = time.time()
        reply = await self.patient.call("bp:add", {**CRISIS, "measured_at": now_iso()}, timeout=30)
        assert reply.get("ok"), reply
        try:
            alert = await asyncio.wait_for(self.own.get(), 30)
        except TimeoutError:
            raise SystemExit("no alert:new for a crisis reading within 30 s") from None
        replies = await self.loaders.ask_all("alert", alert["id"], 30.0)
        received = sum(r[1] for r in replies) + 1
        if received < RECIPIENTS:
            raise SystemExit(f"alert {alert['id']} reached {received} of {RECIPIENTS} recipients within 30 s")
        last = max([alert["at"], *(r[2] for r in replies if r[2] is not None)])
        await self.acker.call("alert:ack", {"alert_id": alert["id"]}, timeout=30)
        await asyncio.sleep(0.1)  # let the acknowledgement settle
        return (last - t_send) * 1000

    async def drain(self, limit_s: float = 0.3, timeout: float = 20) -> None:
        """Until a normal reading is acknowledged within ``limit_s`` again: a failed capacity step leaves a
        backlog (in the servers and the store) that idle alerts must not queue behind."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            t = time.perf_counter()
            await self.patient.call("bp:add", {"systolic": 120, "diastolic": 78, "pulse": 70,
                                               "measured_at": now_iso()}, timeout=30)
            if time.perf_counter() - t < limit_s:
                return
            await asyncio.sleep(0.5)

    async def alerts(self, what: str) -> list[float]:
        """ALERTS_PER_ROUND alerts' e2e times, fewer if the budget runs out (an alert under overload can
        take many seconds)."""
        times: list[float] = []
        longest = 0.0
        for i in range(ALERTS_PER_ROUND):
            if i and self.budget.left() < 15 + longest:
                self.budget.cut.append(f"{what}: alerts {i + 1}-{ALERTS_PER_ROUND}")
                break
            t = time.monotonic()
            times.append(await self.alert())
            longest = max(longest, time.monotonic() - t)
        return times

    async def readings(self, rate: float, seconds: float, measure: bool = False) -> dict[str, Any]:
        await self.loaders.ask_all("load", rate / LOADERS)
        await asyncio.sleep(min(1.0, seconds / 4))  # every patient has started
        if measure:
            self.window.open()
        await asyncio.sleep(seconds)
        if measure:
            self.window.close()
        replies = await self.loaders.ask_all("unload")
        acks = [a for r in replies for a in r[1]["acks"]]
        acked = len(acks)
        out = {"rate": rate, "acked_per_s": acked / (seconds + min(1.0, seconds / 4)),
               "ack_p99_s": pct(acks, 99), "errors": sum(r[1]["errors"] for r in replies)}
        if measure:
            out["cpu_us_per_reading"] = per_op_us(self.window.cpu, acked)
            out["store_commands_per_reading"] = (self.window.store_commands or 0) / max(acked, 1)
        return out

    def keeps_up(self, step: dict[str, Any]) -> bool:
        return (step["ack_p99_s"] is not None and step["ack_p99_s"] < ACK_LIMIT_S
                and step["acked_per_s"] >= 0.95 * step["rate"] and not step["errors"])

    async def capacity(self, start_rate: float) -> dict[str, Any]:
        """The best step keeping up, stepping x1.5 from ``start_rate``, then once between."""
        best: dict[str, Any] | None = None
        rate = start_rate
        top_reached = False
        for i in range(MAX_STEPS):
            if i and not self.budget.allows(STEP_S + 3 + ALERTS_RESERVE_S, "capacity search"):
                break
            step = await self.readings(rate, STEP_S, measure=True)
            print(f"    {rate:.0f} readings/s offered: {step['acked_per_s']:.0f}/s acknowledged, ack p99 "
                  f"{(step['ack_p99_s'] or 0) * 1000:.0f} ms, {step['errors']} errors", flush=True)
            if not self.keeps_up(step):
                top_reached = True
                if best is not None and self.budget.allows(STEP_S + 3 + ALERTS_RESERVE_S, "capacity refinement"):
                    between = await self.readings((best["rate"] * rate) ** 0.5, STEP_S, measure=True)
                    if self.keeps_up(between):
                        best = between
                break
            best = step
            rate *= 1.5
        if best is None:  # even the first step failed: report it, the load runs at 70% of it
            best = step
        return {**best, "top_reached": top_reached}


async def run(budget: Budget, tmp: Path) -> dict[str, Any]:
    with embedded_store(tmp / "store") as store, redis_server() as redis:
        async with Seeder(store.url, DB) as seed:
            crisis = (await seed.users("patient", 1))[0]
            carers = await seed.users("caregiver", RECIPIENTS)
            await seed.link([(crisis, c) for c in carers])
            patients = await seed.users("patient", PATIENTS)
        env = {**server_env(store.url, DB), "HEALTHMATE_REDIS_URL": redis.url,
               "HEALTHMATE_CONNECT_RATE_PER_S": "100000", "HEALTHMATE_CONNECT_BURST": "100000",
               "HEALTHMATE_EVENT_RATE_PER_S": "100000", "HEALTHMATE_EVENT_BURST": "100000"}
        servers = [spawn_server(str(tmp / f"data{i}"), **env) for i in range(2)]
        helpers: Helpers | None = None
        try:
            for proc, url in servers:
                wait_ready(url, proc)
            urls = [url for _, url in servers]
            t = time.monotonic()
            helpers = loaders(urls, carers[1:], patients)
            connected = sum(r[1] for r in await helpers.recv())
            print(f"{connected} sockets connected in {time.monotonic() - t:.0f} s", flush=True)
            meter = CpuMeter(servers=lambda: [p for proc, _ in servers for p in server_pids(proc.pid)],
                             redis=[redis.pid], store=[store.pid],
                             loaders=lambda: [*helpers.pids, os.getpid()])
            bench = Bench(urls, helpers, Window(meter, tuple(urls), redis=redis), budget)
            async with aiohttp.ClientSession() as http:
                await bench.connect(http, crisis, carers[0])
                return await rounds(bench)
        finally:
            if helpers is not None:
                await helpers.stop()
            stop(*(proc for proc, _ in servers))


async def rounds(bench: Bench) -> dict[str, Any]:
    budget = bench.budget
    out: dict[str, list[Any]] = {k: [] for k in ("capacity", "idle", "load", "load_acks", "alert_costs")}
    rate = CAPACITY_FROM
    for r in budget.rounds(REPEATS, "round", reserve=15):
        print(f"  round {r + 1}: capacity search from {rate:.0f} readings/s", flush=True)
        best = await bench.capacity(rate)
        out["capacity"].append(best)
        rate = best["rate"] / 1.5
        await bench.drain()
        bench.window.open()
        idle = await bench.alerts(f"round {r + 1} idle")
        bench.window.close()
        print(f"  round {r + 1}: {len(idle)} alerts at idle, e2e p99 {pct(idle, 99):.0f} ms", flush=True)
        out["idle"].append(idle)
        out["alert_costs"].append({"cpu_us_per_alert": per_op_us(bench.window.cpu, len(idle)),
                                   "store_commands_per_alert": (bench.window.store_commands or 0) / len(idle)})
        load_rate = LOAD_SHARE * best["acked_per_s"]
        await bench.loaders.ask_all("load", load_rate / LOADERS)
        await asyncio.sleep(STEP_S / 2)  # every patient has started
        try:
            loaded = await bench.alerts(f"round {r + 1} under load")
        finally:
            replies = await bench.loaders.ask_all("unload")
        out["load"].append(loaded)
        out["load_acks"].append(pct([a for x in replies for a in x[1]["acks"]], 99))
        print(f"  round {r + 1}: capacity {best['acked_per_s']:.0f} readings/s; alert e2e p99 idle "
              f"{pct(idle, 99):.0f} ms, under {load_rate:.0f} readings/s {pct(loaded, 99):.0f} ms "
              f"(their ack p99 {(out['load_acks'][-1] or 0) * 1000:.0f} ms)", flush=True)
    return out


def main() -> None:
    budget = start("alerts")
    with tempfile.TemporaryDirectory(prefix="bench-alerts-") as tmp:
        out = asyncio.run(run(budget, Path(tmp)))
    every_idle = [x for batch in out["idle"] for x in batch]
    every_load = [x for batch in out["load"] for x in batch]
    best = out["capacity"][-1]
    emit(budget, {"e2e_p99_ms_idle": [pct(b, 99) for b in out["idle"]],
                  "e2e_p99_ms_load": [pct(b, 99) for b in out["load"]],
                  "e2e_p50_ms_idle": [pct(b, 50) for b in out["idle"]],
                  "e2e_p50_ms_load": [pct(b, 50) for b in out["load"]],
                  "capacity_readings_per_s": [c["acked_per_s"] for c in out["capacity"]],
                  "capacity_ack_p99_ms": [(c["ack_p99_s"] or 0) * 1000 for c in out["capacity"]],
                  "load_ack_p99_ms": [(a or 0) * 1000 for a in out["load_acks"]]},
         e2e_p99_ms_idle_all=rounded(pct(every_idle, 99)), e2e_p99_ms_load_all=rounded(pct(every_load, 99)),
         capacity_top_reached=all(c["top_reached"] for c in out["capacity"]),
         alerts_per_configuration=len(every_idle), recipients=RECIPIENTS, patients=PATIENTS, load_share=LOAD_SHARE,
         cpu_us_per_reading=best.get("cpu_us_per_reading"),
         store_commands_per_reading=rounded(best.get("store_commands_per_reading")),
         cpu_us_per_alert=out["alert_costs"][-1]["cpu_us_per_alert"],
         store_commands_per_alert=rounded(out["alert_costs"][-1]["store_commands_per_alert"]),
         processes=2, store="embedded SecantusDB")


if __name__ == "__main__":
    main()
