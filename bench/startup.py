"""Start-up time and idle memory of one server on the embedded store.

Starts ``healthmate serve`` on a fresh data dir (cold: the store creates its files) and again on
the same dir (warm), timing process start to the first 200 from ``/readyz``; then reads the RSS
of the server and of the store's process after 5 s idle. Store: SecantusDB (embedded)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from server.embedded_store import free_port


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def start(data_dir: str) -> tuple[subprocess.Popen[bytes], float, int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHMATE_")}
    env.update(HEALTHMATE_DATA_DIR=data_dir, HEALTHMATE_PORT=str(port), HEALTHMATE_LOG_LEVEL="WARNING")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return proc, time.perf_counter() - t0, port
        except OSError:
            pass
        if proc.poll() is not None or time.perf_counter() - t0 > 60:
            raise SystemExit("server did not start")
        time.sleep(0.02)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        proc, cold, _ = start(tmp)
        stop(proc)
        warm_runs = []
        for _ in range(3):
            proc, warm, _ = start(tmp)
            warm_runs.append(warm)
            stop(proc)
        proc, _, _ = start(tmp)
        time.sleep(5)
        server_mb = rss_mb(proc.pid)
        store_mb = sum(rss_mb(c) for c in children(proc.pid))
        stop(proc)
    figures = {"bench": "startup", "store": "embedded SecantusDB", "cold_start_s": round(cold, 2),
               "warm_start_s": round(sorted(warm_runs)[1], 2), "server_rss_mb": round(server_mb, 1),
               "store_rss_mb": round(store_mb, 1)}
    print(f"cold start {cold:.2f}s, warm start (median of 3) {figures['warm_start_s']}s; idle RSS: server "
          f"{server_mb:.0f} MB, store {store_mb:.0f} MB")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
