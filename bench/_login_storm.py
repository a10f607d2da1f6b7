"""A login storm, run on demand (``python -m bench._login_storm``; not in ``make bench``, whose 24-minute budget
it does not fit): LOGINS concurrent logins (right and wrong passwords over ACCOUNTS seeded accounts, fresh ones
each round, every login from its own address behind the trusted proxy) against one ``healthmate serve`` on the
embedded store (its own process), while a client asks ``/healthz`` and an authenticated ``sys:ping`` every 50 ms
(tests/login_storm.py, as tests/security/test_exhaustion.py does).

Per round (REPEATS rounds on the same server; each figure the median with min-max): the logins' outcomes
(checked: 200/401; refused at once: 503 busy), the server process's RSS just before the storm and its peak
during it (VmHWM, reset at the storm's start), the storm's length (first login sent → last answer), and the
probes' round trips during the storm against the same probes just before it (the in-run baseline). The load
generator shares the machine's cores with the server. Prints one JSON line with the common fields."""

from __future__ import annotations

import asyncio
import statistics
import tempfile
from pathlib import Path

from beanie import PydanticObjectId
from beanie.operators import In

from bench._common import REPEATS, SMOKE, Budget, emit, start
from bench._seed import PASSWORD, Seeder, server_env
from bench._servers import embedded_store, start_server, stop
from tests.login_storm import StormResult, login_plan, storm

LOGINS, ACCOUNTS = (30, 6) if SMOKE else (300, 60)
DB = "bench_login_storm"
BUDGET_S = 60 if SMOKE else 240


def probe_ms(probes: list[tuple[str, float]], what: str) -> float:
    return statistics.median(t for w, t in probes if w == what) * 1000


async def rounds(tmp: Path, budget: Budget) -> list[StormResult]:
    from server.care.documents import User

    out: list[StormResult] = []
    with embedded_store(tmp / "store") as store:
        async with Seeder(store.url, DB) as seed:
            seeded = [await seed.users("caregiver", ACCOUNTS) for _ in range(REPEATS)]
            emails = {str(u.id): u.email for u in await User.find(In(User.id, [
                PydanticObjectId(a.id) for accounts in seeded for a in accounts])).to_list()}
        proc, url, _ = start_server(str(tmp / "data"), HEALTHMATE_TRUST_FORWARDED="true",
                                    **server_env(store.url, DB))
        try:
            for r in budget.rounds(REPEATS, "round", reserve=10):
                accounts = seeded[r]
                result = await storm(url, proc.pid, login_plan([emails[a.id] for a in accounts], PASSWORD, LOGINS),
                                     accounts[0].token)
                out.append(result)
                print(f"  round {r + 1}: {dict(result.outcomes)}; RSS {result.rss_before_mb:.0f} MB, peak "
                      f"{result.peak_mb:.0f} MB (+{result.growth_mb:.0f}); storm {result.storm_s:.1f} s; healthz "
                      f"{probe_ms(result.idle_probes, 'healthz'):.1f} -> {probe_ms(result.probes, 'healthz'):.1f} ms, "
                      f"sys:ping {probe_ms(result.idle_probes, 'sys:ping'):.1f} -> "
                      f"{probe_ms(result.probes, 'sys:ping'):.1f} ms (median, idle -> storm)", flush=True)
        finally:
            stop(proc)
    return out


def main() -> None:
    budget = start("login_storm", BUDGET_S)  # not in BUDGETS_S (make bench's): its own budget
    with tempfile.TemporaryDirectory(prefix="bench-login-storm-") as tmp:
        runs = asyncio.run(rounds(Path(tmp), budget))
    outcomes = sorted({k for r in runs for k in r.outcomes})
    headline = {"rss_growth_mb": [r.growth_mb for r in runs], "rss_peak_mb": [r.peak_mb for r in runs],
                "rss_before_mb": [r.rss_before_mb for r in runs], "storm_s": [r.storm_s for r in runs],
                "busy": [float(r.outcomes["503 busy"]) for r in runs],
                "checked": [float(r.outcomes["200"] + r.outcomes["401 invalid_credentials"]) for r in runs],
                "probes_during_storm": [float(len(r.probes)) for r in runs]}
    for what in ("healthz", "sys:ping"):
        key = what.replace(":", "_")
        headline[f"{key}_idle_ms"] = [probe_ms(r.idle_probes, what) for r in runs]
        headline[f"{key}_storm_ms"] = [probe_ms(r.probes, what) for r in runs]
        headline[f"{key}_storm_max_ms"] = [max(t for w, t in r.probes if w == what) * 1000 for r in runs]
    emit(budget, headline, logins=LOGINS, accounts=ACCOUNTS, outcomes={k: [r.outcomes[k] for r in runs]
                                                                       for k in outcomes},
         store="embedded SecantusDB (its own process)", server="1 process, HEALTHMATE_PASSWORD_QUEUE default (32)")


if __name__ == "__main__":
    main()
