"""Scale-out: what the same mixed workload costs per operation on one server process and on
``serve --workers 2``, and so what more cores would give.

Workload (bench/node/mixed.mjs, the official Node socket.io client as load generator): HOUSEHOLDS
households, each a patient, their caregiver and the patient's ECG sensor. The sensor streams in real
time (a 200 ms frame every 200 ms, analysed live, watched by the caregiver); caregiver and patient are
in a call over which LANES scripts per household run back to back, each round SIGNALS_PER_READING
relayed ICE candidates (``call:signal``) and one blood-pressure reading (``bp:add``), every
CRISIS_EVERY-th reading a crisis that raises an alert the caregiver acknowledges. An operation: one
acknowledged ok (frame, signal, reading, alert acknowledgement) in the measured window (after the
warm-up, FIRST_WARMUP_S longer the first time; the load generator marks its ends, where CPU times and
counters are read).

Configurations on one embedded store (SecantusDB, its own process), each on a database of its own with
the same number of households (seeded), both servers up throughout and measured in turn, ``1, 2``,
REPEATS times over: ``1`` = ``healthmate serve``, one process, as a single-process deployment
runs it (no Redis); ``2`` = ``healthmate serve --workers 2`` sharing rooms through Redis, the sockets of a
household landing on whichever worker the kernel picks (so half the relays and most alerts cross
processes).

On 2 cores the store, the analysis worker and the load generator take most of a core, so throughput
cannot show scale-out here. The headline is a cost ratio instead: ``scale_efficiency`` = operations per
server-CPU-second on 2 workers (Redis's CPU counted in their cost) / the same on 1 process. Model (README):
with the store and Redis on machines of their own, N workers on N cores carry about
N x efficiency x what one process carries on one core, as long as the cost per operation stays what 2
workers pay (the share of messages crossing processes grows from 1/2 towards 1 with N, so read it as an
upper bound for large N). Also reported per operation: store commands (the servers' command
monitoring), Redis commands and PUBLISHes, and CPU per process group.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._common import REPEATS, SMOKE, CpuMeter, cores, emit, own_processes, per_op_us, rounded, server_pids, start
from bench._seed import Seeder, server_env
from bench._servers import (
    NODE,
    UNLIMITED,
    RedisServer,
    Store,
    Window,
    embedded_store,
    ensure_node,
    redis_server,
    run_marked,
    spawn_server,
    stop,
    wait_ready,
)

HOUSEHOLDS = 2 if SMOKE else 24
LANES = 2
# A household's day: a call or two (~20-40 signaling messages each) and 2-4 blood-pressure readings.
SIGNALS_PER_READING = 20
CRISIS_EVERY = 10
DURATION_S = 0.5 if SMOKE else 6.0
WARMUP_S = 0.5 if SMOKE else 3.0
FIRST_WARMUP_S = 6.0
DB = "bench_scale"


async def households(store_url: str, db: str) -> list[dict[str, str]]:
    """Patients with their caregiver linked and an ECG sensor paired."""
    async with Seeder(store_url, db) as seed:
        patients, carers = await seed.users("patient", HOUSEHOLDS), await seed.users("caregiver", HOUSEHOLDS)
        await seed.link(list(zip(patients, carers, strict=True)))
        sensors = await seed.devices(patients)
    return [{"patient_id": p.id, "patient_token": p.token, "carer_token": c.token, "device_token": d}
            for p, c, d in zip(patients, carers, sensors, strict=True)]


@dataclass
class Config:
    name: str
    workers: int
    proc: Any
    url: str
    homes: list[dict[str, str]]


def run(config: Config, tmp: Path, store: Store, redis: RedisServer, warmup_s: float) -> dict[str, Any]:
    plan = tmp / f"plan-{config.name}.json"
    plan.write_text(json.dumps({"url": config.url, "households": config.homes, "duration_s": DURATION_S,
                                "warmup_s": warmup_s, "lanes": LANES, "crisis_every": CRISIS_EVERY,
                                "signals_per_reading": SIGNALS_PER_READING}))
    shared = config.workers > 1
    meter = CpuMeter(server=lambda: server_pids(config.proc.pid), redis=[redis.pid] if shared else [],
                     store=[store.pid], loadgen=lambda: own_processes("mixed.mjs"))
    window = Window(meter, (config.url,), config.workers, redis if shared else None)
    result = run_marked(["node", str(NODE / "mixed.mjs"), str(plan)], window.open, window.close,
                        timeout=DURATION_S + WARMUP_S + 120)
    ops = sum(result["ok"].values())
    failed = sum(result["errors"].values())
    if failed > 0.01 * max(ops, 1):
        raise SystemExit(f"{config.name}: {failed} operations failed: {result['errors']}")
    server_cpu = window.cpu["server"] + window.cpu["redis"]
    out = {"ops": ops, "ops_per_s": ops / window.seconds, "ops_per_server_cpu_s": ops / server_cpu,
           "cpu_us_per_op": per_op_us(window.cpu, ops), "cores": cores(window.cpu, window.seconds),
           "store_commands_per_op": window.store_commands / ops if ops and window.store_commands is not None else None,
           "redis_per_op": {k: rounded(v / ops) for k, v in (window.redis_counts or {}).items()} if ops else None,
           "ok": result["ok"], "signal_p99_ms": result["signal_p99_ms"], "bp_p99_ms": result["bp_p99_ms"]}
    print(f"  {config.name}: {ops} ops, {out['ops_per_s']:.0f}/s, {out['ops_per_server_cpu_s']:.0f} per "
          f"server-CPU-second; cores {out['cores']}; store commands/op {rounded(out['store_commands_per_op'])}, "
          f"Redis/op {out['redis_per_op']}", flush=True)
    return out


def main() -> None:
    budget = start("scale")
    ensure_node()
    runs: dict[str, list[dict[str, Any]]] = {"1": [], "2": []}
    with tempfile.TemporaryDirectory() as folder, embedded_store(Path(folder) / "store") as store, \
            redis_server() as redis:
        tmp = Path(folder)
        # Both servers run throughout (the one not under load idles), each on a database of its own.
        configs = []
        for name, workers in (("1", 1), ("2", 2)):
            db = f"{DB}_{name}"
            homes = asyncio.run(households(store.url, db))
            args, env = (("--workers", "2"), {"HEALTHMATE_REDIS_URL": redis.url}) if workers > 1 else ((), {})
            proc, url = spawn_server(str(tmp / name), *args, **server_env(store.url, db), **UNLIMITED, **env)
            configs.append(Config(name, workers, proc, url, homes))
        try:
            for c in configs:
                wait_ready(c.url, c.proc)
            print(f"{HOUSEHOLDS} households x {LANES} scripts, {DURATION_S:.0f} s windows, {REPEATS} rounds",
                  flush=True)
            for r in budget.rounds(REPEATS, "round"):
                for c in configs:  # the first time, longer: the analysis workers start with the first streams
                    runs[c.name].append(run(c, tmp, store, redis, WARMUP_S + (0 if r or SMOKE else FIRST_WARMUP_S)))
        finally:
            stop(*(c.proc for c in configs))
    pairs = list(zip(runs["1"], runs["2"], strict=False))
    emit(budget, {"scale_efficiency": [b["ops_per_server_cpu_s"] / a["ops_per_server_cpu_s"] for a, b in pairs],
                  "ops_per_server_cpu_s_1": [r["ops_per_server_cpu_s"] for r in runs["1"]],
                  "ops_per_server_cpu_s_2": [r["ops_per_server_cpu_s"] for r in runs["2"]],
                  "ops_per_s_1": [r["ops_per_s"] for r in runs["1"]],
                  "ops_per_s_2": [r["ops_per_s"] for r in runs["2"]],
                  "store_commands_per_op": {c: [r["store_commands_per_op"] for r in runs[c]] for c in runs}},
         redis_per_op_2=runs["2"][-1]["redis_per_op"],
         cpu_us_per_op={c: runs[c][-1]["cpu_us_per_op"] for c in runs},
         cores={c: runs[c][-1]["cores"] for c in runs},
         ops={c: runs[c][-1]["ok"] for c in runs},
         signal_p99_ms={c: rounded(runs[c][-1]["signal_p99_ms"]) for c in runs},
         bp_p99_ms={c: rounded(runs[c][-1]["bp_p99_ms"]) for c in runs},
         households=HOUSEHOLDS, window_s=DURATION_S, store="embedded SecantusDB (its own process)")


if __name__ == "__main__":
    main()
