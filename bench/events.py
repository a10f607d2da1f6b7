"""The event path against what a user would pick instead, with one load generator in one run.

The official Node socket.io client (bench/node/loadgen.mjs: CONNECTIONS websocket connections, each
keeping WINDOW acked events in flight) drives, in turn, four servers answering the same payload
(the client's ``t`` and the server clock in the uniform ack ``{"ok": true, "data": ...}``):
  * ``1``: the project's authenticated, validated round trip (``sys:ping``: token-authenticated socket,
    rate limits, pydantic validation, uniform ack) on one process;
  * ``2``: the same on ``--workers 2`` (Redis-shared rooms, SO_REUSEPORT);
  * ``bare_python``: a bare python-socketio server on aiohttp with the project's JSON codec (orjson) on
    uvloop (bench/_bare_echo.py; the project runs the standard loop with urgent work first,
    ``server.core.urgent_loop``, uvloop only with ``HEALTHMATE_URGENT_FIRST=off``);
  * ``node``: Node's own socket.io server (bench/node/echo_server.mjs).
All four run at once (idle but for the one under load) and the load runs 1, 2, bare, node, REPEATS
times over. A round trip: the client's emit to its ack received. ``cpu_us_per_rt``: CPU of the server's
processes (for ``2``, both workers and Redis) per round trip over the measured window; ``failed``: refused
replies and acks not received within 10 s, ``failed_lanes``: lanes (a connection's in-flight slot) that
saw one. The load generator shares the machine's cores with the server under test: compare ratios.
Store (for the project's logins only): the embedded SecantusDB, one for both project servers."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import (
    REPEATS,
    SMOKE,
    Budget,
    CpuMeter,
    emit,
    own_processes,
    per_op_us,
    rounded,
    server_pids,
    start,
)
from bench._seed import Seeder, server_env
from bench._servers import (
    NODE,
    UNLIMITED,
    embedded_store,
    ensure_node,
    redis_server,
    run_marked,
    spawn_server,
    stop,
    wait_ready,
)
from server.infra.embedded_store import free_port

DURATION_S = float(os.environ.get("BENCH_EVENTS_SECONDS", 0.5 if SMOKE else 4))
WARMUP_S = 0.3 if SMOKE else 1.0
CONNECTIONS = 2 if SMOKE else 10
WINDOW = int(os.environ.get("BENCH_EVENTS_WINDOW", "8"))
CONFIGS = ("1", "2", "bare_python", "node")


def _up(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def external(cmd: list[str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not _up(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{cmd} did not start")
        time.sleep(0.05)
    return proc


def load(url: str, event: str, tokens: list[str | None], meter: CpuMeter) -> dict[str, Any]:
    cpu: dict[str, Any] = {}

    def stopped() -> None:
        cpu["cpu"], cpu["seconds"] = meter.read()

    result = run_marked(["node", str(NODE / "loadgen.mjs"), url, event, json.dumps(tokens), str(DURATION_S),
                         str(WINDOW), str(WARMUP_S)], meter.start, stopped, timeout=DURATION_S + 60)
    result.update(cpu)
    return result


async def seed(store_url: str) -> list[str | None]:
    async with Seeder(store_url, "bench_events") as seeder:
        return [a.token for a in await seeder.users("patient", CONNECTIONS)]


def measure(budget: Budget, tmp: str) -> dict[str, list[dict[str, Any]]]:
    procs: list[subprocess.Popen[Any]] = []
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in CONFIGS}
    with embedded_store(Path(tmp) / "store") as store, redis_server() as redis:
        tokens = asyncio.run(seed(store.url))
        env = {**server_env(store.url, "bench_events"), **UNLIMITED}
        try:
            one, url_1 = spawn_server(str(Path(tmp) / "one"), **env)
            procs.append(one)
            two, url_2 = spawn_server(str(Path(tmp) / "two"), "--workers", "2", HEALTHMATE_REDIS_URL=redis.url, **env)
            procs.append(two)
            port_bare, port_node = free_port(), free_port()
            procs.append(external([sys.executable, "-m", "bench._bare_echo", str(port_bare)], port_bare))
            procs.append(external(["node", str(NODE / "echo_server.mjs"), str(port_node)], port_node))
            wait_ready(url_1, one)
            wait_ready(url_2, two)
            targets = {
                "1": (url_1, "sys:ping", tokens, lambda: server_pids(one.pid), []),
                "2": (url_2, "sys:ping", tokens, lambda: server_pids(two.pid), [redis.pid]),
                "bare_python": (f"http://127.0.0.1:{port_bare}", "echo", [None] * CONNECTIONS, [procs[2].pid], []),
                "node": (f"http://127.0.0.1:{port_node}", "echo", [None] * CONNECTIONS, [procs[3].pid], []),
            }
            store_pid = store.pid
            for _ in budget.rounds(REPEATS):
                for name, (url, event, toks, pids, redis_pids) in targets.items():
                    meter = CpuMeter(server=pids, redis=redis_pids, store=[store_pid] if name in ("1", "2") else [],
                                     loadgen=lambda: own_processes("loadgen.mjs"))
                    result = load(url, event, toks, meter)
                    print(f"  {name}: {result['rt_per_s']} rt/s, p99 {result['p99_ms']:.1f} ms, failed "
                          f"{result['refused'] + result['timeouts']} ({result['failed_lanes']} lanes); CPU s "
                          f"{ {k: round(v, 2) for k, v in result['cpu'].items()} }", flush=True)
                    runs[name].append(result)
        finally:
            stop(*procs)
    return runs


def main() -> None:
    budget = start("events")
    ensure_node()
    print(f"{CONNECTIONS} connections x {WINDOW} in flight, {DURATION_S:.0f} s per run, {REPEATS} rounds", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        runs = measure(budget, tmp)
    rates = {c: [r["rt_per_s"] for r in runs[c]] for c in CONFIGS}
    split = {c: [per_op_us(r["cpu"], r["rt"]) for r in runs[c]] for c in CONFIGS}
    emit(budget, {"rt_per_s_1": rates["1"], "rt_per_s_2": rates["2"], "bare_python_rt_per_s": rates["bare_python"],
                  "node_rt_per_s": rates["node"],
                  "ratio_2_vs_node": [a / b for a, b in zip(rates["2"], rates["node"], strict=False)],
                  "ratio_1_vs_bare_python": [a / b for a, b in zip(rates["1"], rates["bare_python"], strict=False)],
                  # the server side: its processes, and Redis for the 2 workers
                  "cpu_us_per_rt": {c: [(x["server"] or 0) + (x["redis"] or 0) for x in split[c]] for c in CONFIGS}},
         cpu_us_per_rt_split={c: split[c][-1] for c in CONFIGS},
         failed={c: sum(r["refused"] + r["timeouts"] for r in runs[c]) for c in CONFIGS},
         failed_lanes={c: max(r["failed_lanes"] for r in runs[c]) for c in CONFIGS},
         p99_ms={c: rounded(runs[c][-1]["p99_ms"]) for c in CONFIGS},
         connections=CONNECTIONS, window=WINDOW, seconds_per_run=DURATION_S,
         store="embedded SecantusDB (logins only)")


if __name__ == "__main__":
    main()
