"""The event path against what a user would pick instead, with one load generator in one run.

The official Node socket.io client (bench/node/loadgen.mjs: 10 websocket connections, each keeping
WINDOW acked events in flight) drives, in turn:
  * the project's authenticated, validated event round trip (``sys:ping``: token-authenticated
    socket, rate limits, pydantic validation, uniform ack) on 1 process and on ``--workers 2``
    (Redis-shared rooms, SO_REUSEPORT);
  * a bare python-socketio echo server on aiohttp (bench/_bare_echo.py);
  * Node's own socket.io server (bench/node/echo_server.mjs), the baseline.
The load generator shares the machine's 2 cores with the server under test; every figure pays the
same tax, so compare them as ratios. Store (for logins only): embedded SecantusDB."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._servers import UNLIMITED, redis_server, register, start_server, stop, wait_ready
from server.infra.embedded_store import free_port

NODE = Path(__file__).resolve().parent / "node"
DURATION_S = float(os.environ.get("BENCH_EVENTS_SECONDS", "10"))
CONNECTIONS = 10
WINDOW = int(os.environ.get("BENCH_EVENTS_WINDOW", "8"))


def load(url: str, event: str, tokens: list[str | None]) -> dict[str, float]:
    out = subprocess.run(["node", str(NODE / "loadgen.mjs"), url, event, json.dumps(tokens), str(DURATION_S),
                          str(WINDOW)], capture_output=True, text=True, timeout=DURATION_S + 60)
    if out.returncode != 0:
        raise SystemExit(f"load generator failed: {out.stderr}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  {event} on {url}: {result}", flush=True)
    return result


def project(*args: str, **env: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        proc, url, _ = start_server(tmp, *args, **UNLIMITED, **env)
        try:
            tokens = [register(url, "patient", f"ev{i}")["access_token"] for i in range(CONNECTIONS)]
            return load(url, "sys:ping", tokens)
        finally:
            stop(proc)


def external(cmd: list[str], port: int) -> dict[str, float]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:  # any HTTP answer on the socket.io path means it is up
            try:
                wait_ready(f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling", proc, timeout=1)
            except SystemExit:
                pass
            if _up(port) or time.monotonic() > deadline:
                break
        return load(f"http://127.0.0.1:{port}", "echo", [None] * CONNECTIONS)
    finally:
        stop(proc)


def _up(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def ensure_node() -> None:
    """Node and bench/node's packages (the official socket.io client and server)."""
    if subprocess.run(["node", "--version"], capture_output=True).returncode != 0:
        raise SystemExit("node is required (the official socket.io client is the load generator)")
    if not (NODE / "node_modules" / "socket.io").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--prefix", str(NODE)], check=True)


def main() -> None:
    ensure_node()
    print(f"{CONNECTIONS} connections x {WINDOW} in flight, {DURATION_S:.0f} s each", flush=True)
    one = project()
    with redis_server() as redis_url:
        two = project("--workers", "2", HEALTHMATE_REDIS_URL=redis_url)
    port = free_port()
    bare = external([sys.executable, "-m", "bench._bare_echo", str(port)], port)
    port = free_port()
    node = external(["node", str(NODE / "echo_server.mjs"), str(port)], port)
    figures = {"bench": "events", "rt_per_s_1": one["rt_per_s"], "rt_per_s_2": two["rt_per_s"],
               "bare_python_rt_per_s": bare["rt_per_s"], "node_rt_per_s": node["rt_per_s"],
               "ratio_2_vs_node": round(two["rt_per_s"] / node["rt_per_s"], 2),
               "p99_ms_1": round(one["p99_ms"], 2), "p99_ms_2": round(two["p99_ms"], 2),
               "connections": CONNECTIONS, "window": WINDOW, "store": "embedded SecantusDB (logins only)"}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
