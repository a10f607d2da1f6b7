"""Start-up time and idle memory of one server on the embedded store.

Starts ``healthmate serve`` on a fresh data dir (cold: the store creates its files) and again on the
same dir (warm), REPEATS times each, interleaved (cold, warm, cold, warm, ...); each time from the
process's start to the first 200 from ``/readyz``. Then the RSS of the server, of the store's two processes
and of the analysis worker after IDLE_S idle (on the last warm start). Store: SecantusDB (embedded)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench._common import REPEATS, SMOKE, descendants, emit, is_store, start
from bench._servers import rss_mb, start_server, stop

IDLE_S = 0.5 if SMOKE else 5.0


def main() -> None:
    budget = start("startup")
    cold, warm = [], []
    with tempfile.TemporaryDirectory() as tmp:
        proc = None
        for r in budget.rounds(REPEATS, reserve=IDLE_S + 10):
            if proc is not None:
                stop(proc)
            data = str(Path(tmp) / f"data{r}")
            proc, _, seconds = start_server(data)
            cold.append(seconds)
            stop(proc)
            proc, _, seconds = start_server(data)  # kept running until the next repeat, or the idle look
            warm.append(seconds)
        assert proc is not None
        time.sleep(IDLE_S)
        kids = descendants(proc.pid)
        server_mb = rss_mb(proc.pid)
        store_mb = sum(rss_mb(c) for c in kids if is_store(c))
        workers_mb = sum(rss_mb(c) for c in kids if not is_store(c))
        stop(proc)
    print(f"cold start {cold} s, warm start {warm} s; idle RSS: server {server_mb:.0f} MB, stores {store_mb:.0f} MB, "
          f"analysis worker {workers_mb:.0f} MB", flush=True)
    emit(budget, {"cold_start_s": cold, "warm_start_s": warm}, server_rss_mb=round(server_mb, 1),
         store_rss_mb=round(store_mb, 1), analysis_worker_rss_mb=round(workers_mb, 1),
         store="embedded SecantusDB: two processes (the bulk collections' apart), store_rss_mb is both's")


if __name__ == "__main__":
    main()
