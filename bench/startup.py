"""Start-up time and idle memory of one server on the embedded store.

Starts ``healthmate serve`` on a fresh data dir (cold: the store creates its files) and again on
the same dir (warm), timing process start to the first 200 from ``/readyz``; then reads the RSS
of the server, of the store's process and of the analysis worker after 5 s idle. Store: SecantusDB (embedded)."""

from __future__ import annotations

import json
import tempfile
import time

from bench._servers import children, cmdline, rss_mb, start_server, stop


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        proc, _, cold = start_server(tmp)
        stop(proc)
        warm_runs = []
        for _ in range(3):
            proc, _, warm = start_server(tmp)
            warm_runs.append(warm)
            stop(proc)
        proc, _, _ = start_server(tmp)
        time.sleep(5)
        kids = children(proc.pid)
        server_mb = rss_mb(proc.pid)
        store_mb = sum(rss_mb(c) for c in kids if "secantusd" in cmdline(c))
        workers_mb = sum(rss_mb(c) for c in kids if "secantusd" not in cmdline(c))
        stop(proc)
    figures = {"bench": "startup", "store": "embedded SecantusDB", "cold_start_s": round(cold, 2),
               "warm_start_s": round(sorted(warm_runs)[1], 2), "server_rss_mb": round(server_mb, 1),
               "store_rss_mb": round(store_mb, 1), "analysis_worker_rss_mb": round(workers_mb, 1)}
    print(f"cold start {cold:.2f}s, warm start (median of 3) {figures['warm_start_s']}s; idle RSS: server "
          f"{server_mb:.0f} MB, store {store_mb:.0f} MB, analysis worker {workers_mb:.0f} MB")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
