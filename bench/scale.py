"""Scale-out: the same mixed workload on one server process and on ``serve --workers 2``.

Workload (bench/node/mixed.mjs, the official Node socket.io client as load generator): HOUSEHOLDS
households, each a patient, their caregiver and the patient's ECG sensor. The sensor streams in real
time (a 200 ms frame every 200 ms, analysed live, watched by the caregiver); caregiver and patient are
in a call over which LANES scripts per household run back to back, each round SIGNALS_PER_READING
relayed ICE candidates (``call:signal``) and one blood-pressure reading (``bp:add``), every
CRISIS_EVERY-th reading a crisis that raises an alert the caregiver acknowledges. ``ops_per_s``:
operations acknowledged ok per second (frames, signals, readings, alert acknowledgements).

Configurations on one embedded store (SecantusDB, its own process), same accounts:
(1) ``healthmate serve``, one process, as a single-process deployment runs it (no Redis);
(2) ``healthmate serve --workers 2`` sharing rooms through Redis, the sockets of a household landing
on whichever worker the kernel picks (so half the relays and most alerts cross processes).
Run 1, 2, 1: the store grows as the bench goes (readings, audit), so the single process is measured
before and after and ``ops_per_s_1`` is the mean.

Reading the ratio: the load generator, the store and the analysis worker share the machine's 2 cores
with the servers; ``cores_*`` says what each took. A second process can only use what the single
process leaves idle, so on this machine the ratio is bounded by 2 / (cores the 1-process run used).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from bench._servers import UNLIMITED, cpu_s, descendants, post, redis_server, register, start_server, stop
from bench.events import NODE, ensure_node
from server.infra.embedded_store import EmbeddedStore

HOUSEHOLDS = int(os.environ.get("BENCH_SCALE_HOUSEHOLDS", "24"))
LANES = 2
# A household's day: a call or two (~20-40 signaling messages each) and 2-4 blood-pressure readings.
SIGNALS_PER_READING = 20
CRISIS_EVERY = 10
DURATION_S = float(os.environ.get("BENCH_SCALE_SECONDS", "15"))
WARMUP_S = 4.0


def store_ops(store: EmbeddedStore) -> dict[str, int]:
    """The store's operation counters (serverStatus ``opcounters``)."""
    with MongoClient(store.url) as client:
        return dict(client.admin.command("serverStatus")["opcounters"])


def household(url: str, n: int) -> dict[str, str]:
    """A patient with their caregiver linked and an ECG sensor paired, through the REST API."""
    patient, carer = register(url, "patient", f"scale{n}"), register(url, "caregiver", f"scale{n}")
    code = post(url, "/api/links/codes", {}, patient["access_token"])
    post(url, "/api/links/redeem", {"code": code["code"]}, carer["access_token"])
    paired = post(url, f"/api/patients/{patient['user']['id']}/devices",
                  {"kind": "ecg", "serial": f"SCALE-{n:04d}", "model": "bench"}, patient["access_token"])
    return {"patient_id": patient["user"]["id"], "patient_token": patient["access_token"],
            "carer_token": carer["access_token"], "device_token": paired["credential"]}


def run(label: str, tmp: str, store: EmbeddedStore, homes: list[dict[str, str]] | None, *args: str,
        **env: str) -> tuple[dict[str, Any], list[dict[str, str]]]:
    proc, url, _ = start_server(tmp, *args, HEALTHMATE_MONGODB_URL=store.url, HEALTHMATE_MONGODB_DB="bench_scale",
                                HEALTHMATE_JWT_SECRET="scale-bench-" + "s" * 40, **UNLIMITED, **env)
    try:
        if homes is None:
            with ThreadPoolExecutor(4) as pool:
                homes = list(pool.map(lambda n: household(url, n), range(HOUSEHOLDS)))
        plan = Path(tmp) / f"plan-{label}.json"
        plan.write_text(json.dumps({"url": url, "households": homes, "duration_s": DURATION_S,
                                    "warmup_s": WARMUP_S, "lanes": LANES, "crisis_every": CRISIS_EVERY,
                                    "signals_per_reading": SIGNALS_PER_READING}))
        servers = [proc.pid, *descendants(proc.pid)]  # workers and their analysis processes
        loadgen = subprocess.Popen(["node", str(NODE / "mixed.mjs"), str(plan)], stdout=subprocess.PIPE, text=True)
        time.sleep(WARMUP_S + 2)  # the households are set up and warm by now (setup takes ~1 s)
        store_pid = store.proc.pid if store.proc else 0
        before = {pid: cpu_s(pid) for pid in [*servers, loadgen.pid, store_pid]}
        ops_before = store_ops(store)
        t0 = time.monotonic()
        time.sleep(DURATION_S - 4)
        seconds = time.monotonic() - t0
        cores = {pid: (cpu_s(pid) - before[pid]) / seconds for pid in before}
        store_per_s = {k: round((v - ops_before.get(k, 0)) / seconds) for k, v in store_ops(store).items()}
        out, _ = loadgen.communicate(timeout=DURATION_S + 120)
        if loadgen.returncode != 0:
            raise SystemExit(f"load generator failed ({label})")
        result = json.loads(out.strip().splitlines()[-1])
        result["cores"] = {"servers": round(sum(cores[p] for p in servers), 2),
                           "store": round(cores[store_pid], 2), "loadgen": round(cores[loadgen.pid], 2)}
        result["store_ops_per_s"] = store_per_s
        print(f"  {label}: {result}", flush=True)
        failed = sum(result["errors"].values())
        if failed > 0.01 * sum(result["ok"].values()):
            raise SystemExit(f"{label}: {failed} operations failed: {result['errors']}")
        return result, homes
    finally:
        stop(proc)


async def measure() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        store = EmbeddedStore(Path(tmp) / "store")
        await store.start()
        try:
            print(f"{HOUSEHOLDS} households x {LANES} scripts, {DURATION_S:.0f} s each", flush=True)
            before, homes = await asyncio.to_thread(run, "1 process", tmp, store, None)
            with redis_server() as redis_url:
                two, _ = await asyncio.to_thread(run, "2 workers", tmp, store, homes, "--workers", "2",
                                                 HEALTHMATE_REDIS_URL=redis_url)
            after, _ = await asyncio.to_thread(run, "1 process again", tmp, store, homes)
        finally:
            await store.stop()
    return before, two, after


def main() -> None:
    ensure_node()
    before, two, after = asyncio.run(measure())
    ops_1 = (before["ops_per_s"] + after["ops_per_s"]) / 2
    figures = {"bench": "scale", "ops_per_s_1": round(ops_1), "ops_per_s_2": two["ops_per_s"],
               "ratio_2_vs_1": round(two["ops_per_s"] / ops_1, 2),
               "ops_per_s_1_before_after": [before["ops_per_s"], after["ops_per_s"]],
               "ops_1": before["ok"], "ops_2": two["ok"],
               "signal_p99_ms_1": round(before["signal_p99_ms"], 1), "signal_p99_ms_2": round(two["signal_p99_ms"], 1),
               "bp_p99_ms_1": round(before["bp_p99_ms"], 1), "bp_p99_ms_2": round(two["bp_p99_ms"], 1),
               "cores_1": before["cores"], "cores_2": two["cores"],
               "households": HOUSEHOLDS, "store": "embedded SecantusDB (its own process)", "cpus": os.cpu_count()}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
