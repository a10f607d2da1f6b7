"""A login storm: 300 concurrent logins (right and wrong passwords, 60 accounts, each login from its own
address behind the trusted proxy) against one ``healthmate serve`` on the embedded store, while a client asks
``/healthz`` and an authenticated ``sys:ping`` every 50 ms (tests/login_storm.py).

Reported, median with min-max over REPEATS fresh servers: the logins' outcomes (checked: 200/401; refused at
once: 503 busy), the server process's RSS just before the storm and its peak during it (VmHWM, reset at the
storm's start; the store is another process), how long the storm lasted (first login sent to last answer),
and the probes' round trips during the storm against the same probes just before it (the in-run baseline).
The load generator shares the machine's cores with the server."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
from typing import Any

from server.infra.embedded_store import free_port
from tests.helpers import ServerProcess
from tests.login_storm import StormResult, storm

REPEATS = int(os.environ.get("BENCH_LOGIN_STORM_REPEATS", "3"))
LOGINS, ACCOUNTS = 300, 60


async def once() -> StormResult:
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess({"HEALTHMATE_DATA_DIR": tmp, "HEALTHMATE_TRUST_FORWARDED": "true",
                                "HEALTHMATE_LOG_LEVEL": "WARNING", "HEALTHMATE_REGISTER_MAX_PER_IP": "1000000"},
                               free_port())
        await server.start(timeout=60)
        try:
            return await storm(server, LOGINS, ACCOUNTS)
        finally:
            await server.stop()


def spread(values: list[float], digits: int = 1) -> dict[str, float]:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits)}


def probe_ms(probes: list[tuple[str, float]], what: str) -> float:
    return statistics.median(t for w, t in probes if w == what) * 1000


async def main() -> None:
    runs = []
    for i in range(REPEATS):
        r = await once()
        runs.append(r)
        print(f"  run {i + 1}: {dict(r.outcomes)}; RSS {r.rss_before_mb:.0f} MB, peak {r.peak_mb:.0f} MB "
              f"(+{r.growth_mb:.0f}); storm {r.storm_s:.1f} s; probes: healthz {probe_ms(r.idle_probes, 'healthz'):.1f}"
              f" -> {probe_ms(r.probes, 'healthz'):.1f} ms, sys:ping {probe_ms(r.idle_probes, 'sys:ping'):.1f} -> "
              f"{probe_ms(r.probes, 'sys:ping'):.1f} ms (median idle -> storm), slowest in storm "
              f"{max(t for _, t in r.probes) * 1000:.0f} ms", flush=True)
    figures: dict[str, Any] = {
        "bench": "login_storm", "store": "embedded SecantusDB", "logins": LOGINS, "accounts": ACCOUNTS,
        "repeats": REPEATS,
        "outcomes": {k: spread([float(r.outcomes[k]) for r in runs], 0) for k in sorted({k for r in runs
                                                                                            for k in r.outcomes})},
        "rss_before_mb": spread([r.rss_before_mb for r in runs]),
        "rss_peak_mb": spread([r.peak_mb for r in runs]),
        "rss_growth_mb": spread([r.growth_mb for r in runs]),
        "storm_s": spread([r.storm_s for r in runs]),
        "probes_during_storm": spread([float(len(r.probes)) for r in runs], 0),
    }
    for what in ("healthz", "sys:ping"):
        key = what.replace(":", "_")
        figures[f"{key}_idle_ms"] = spread([probe_ms(r.idle_probes, what) for r in runs])
        figures[f"{key}_storm_ms"] = spread([probe_ms(r.probes, what) for r in runs])
        figures[f"{key}_storm_max_ms"] = spread([max(t for w, t in r.probes if w == what) * 1000 for r in runs])
    print(json.dumps(figures))


if __name__ == "__main__":
    asyncio.run(main())
