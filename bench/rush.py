"""The morning rush: the most patients one small box (one ``healthmate serve`` on the embedded store, SecantusDB)
serves through 08:00, with issue 18's settings off (``HEALTHMATE_GROUP_COMMIT=off`` and
``HEALTHMATE_URGENT_FIRST=off``: one store command per write, and alerts queue behind bulk work as before) and on,
in the same run. (Its other steps, fewer store commands per action and due doses claimed in batches, have no
setting: both servers have them.)

Per patient (accounts, links and devices seeded into the store): the patient's phone, their caregiver's
phone and their medicine box connected (bench._sio, in LOADERS load-generator processes; a patient's sockets
all in one; the box acknowledges each command) and, for 10% of them, an ECG device. The 1% in crisis, and so the
caregivers their alerts go to, are in a load generator of their own (``loader_of``): a caregiver's phone is not one
of 1,600 sockets sharing an event loop, and with them in the two shared ones an alert's time also held that loop's
queue (six quick runs each way at 800, 2026-12-06: p90 of every alert under the rush 56 ms shared, 46 ms apart).
A step with N patients plays 08:00-08:05 compressed into WINDOW_S seconds (x COMPRESSION):

* at due time (08:00) every patient has a dose due (written into ``dose_events`` as the planner writes
  them, drawer 1): ``dose:due`` to the patient's phone, a box command, a stored reminder notification;
* over the window every patient sends one ``bp:add`` at a random time; 1% in hypertensive crisis (an
  alert to the care team: their caregiver, who confirms it with ``alert:received`` and acknowledges it);
* 10% stream ECG through the window (250 Hz, a 250-sample frame a second), watched live by their caregiver;
* 2% of caregivers call their patient (signaling: invite, incoming, accept, hang up).

Timings, wall clock in the loader processes: reminder lag from the due time to the patient's socket
receiving ``dose:due`` (every dose); BP ack from ``bp:add`` sent to its ack; alert e2e from the crisis
reading sent to the caregiver's socket receiving ``alert:new`` (the care team's every recipient);
frames lost: frames sent in the window that their watcher had not received DRAIN_S after it (the load generators:
``bench._rush_loader``).
The loaders' own event-loop lag over the step (``loader_lag_p99_ms``: ms late on a 10 ms sleep, all three) is what
the measuring side adds to those timings; it is reported, not subtracted.
A step passes if reminder p99 < 5 s, BP ack p99 < 1 s, alert e2e p99 < 1 s, <= 1% frames lost, every
call set up, and nothing lost: every dose reached its phone, every reading acknowledged and stored, every
reminder notification stored (waited for up to STORED_S after the window, not past the budget: each arrives on its
phone once stored, and the loaders are asked, not the store; the store is counted once the measuring ends).

Two servers, ``off`` and ``on``, share the store (each its own database and accounts; ``on`` keeps its bulk collections
in a second store process, as a server on the embedded store does, and ``off`` everything in the one store, as
before; ``store_cpu_s`` is both stores', ``bulk_store_cpu_s`` the second's) and take turns, step by step,
who goes first alternating from one turn to the next (the step that follows another has shown a third to a half more
store CPU: what the first left to the store in the background), each step starting once the stores have settled (under
a tenth of a core over half a second, waited for up to SETTLE_MAX_S: ``settle_s``), so that neither's leftover work
runs into the other's figures. Each searches N from N_FROM doubling until a step fails (halving if the first fails),
then once between the last passing step and the failing one, a turn taken only if it fits in what is left of the
budget (each step estimated as the longest so far, growth aside, scaled by its patients, plus the growth it needs);
``patients`` (on) and ``patients_off``: the largest passing N (0 if none; ``top_reached``: a failing step was found
rather than the budget ending the search; ``plays_passed``: of that N's plays, the step and its repeats below, how
many passed: one that passed once can fail when played again). The figures beside them are the best passing step's;
``store_cmds_per_patient`` is the server's store commands (PyMongo command monitoring, ``/healthz``) from 0.5 s before
due time to the end of the step, per patient, and ``server_cpu_s``/``store_cpu_s`` the CPU seconds (/proc) over the same
span (``loaders_cpu_s``: the load generators', which share the machine). Before the search each server's idle alert e2e
is timed, once the stores and the server have settled after the seeding (IDLE_ALERTS crisis readings one after another,
after a first one that is not counted: the first alert after start-up took 30-50 ms where the next took 15-35):
``alert_e2e_p99_ms_idle``; under the rush the alert p99 should stay within 2x of it. Both are the slowest of
a few, so the ratio swings between runs: once the search ends, the largest passing step is played again (REPEATS in
all, as the budget allows; every step, the step between included, is played with its own N connected, not with a
larger step's: their patients disconnected first, and once the server too has settled after they left, ``trim``),
each time after idle alerts of its own, and ``alert_e2e_ratio`` is the median of the ratios (``alert_e2e_ratios``,
``alert_e2e_ratio_range``; each repeat in ``alert_repeats``). The same plays pooled (``alert_e2e_pooled``):
p50/p90/p99 of all their alerts (``rush``; the probes apart, ``burst``) and of all the idle alerts timed before them
(``idle``), and the ratios: a play's p99 of eight alerts is its slowest one, the pooled quantiles lean less on one
alert; and ``over_2x_idle_p99``: how many of the plays' alerts and probes took longer than twice the p99 of the idle
alerts timed just before their play (the goal, p99 within 2x, leaves at most 1% of them there; quick tries of
2026-12-07 at 800 put 5-12% there while their plays' ratios came 0.9-2.3 in most tries: the median ratio is a coin
toss around 2x, the share is steadier).
The 1% of alerts land at random times, so whether one falls in the burst of the doses' work (08:00 plus a few
seconds) is luck: one patient in crisis also sends probes, a crisis reading at 10%, 20%, 30% and 40% of the window
(their own reading comes in its second half), timed the same way: ``alert_burst_ms`` (not in the pass/fail: the 1%
are the issue's load). Each alert is timed against the reading that raised it (``alert:new`` names it), and a
patient's crisis readings go one at a time, the next once the last one's alert has come and its acknowledgement is
answered: while an alert is open, another crisis reading raises none (no alert storm). A probe sent then was timed
against a later alert (8.9 s in one quick try with 14 probes), and, while the next waited only for an
acknowledgement already under way, it counted as an alert that never came whenever alerts took longer than the
probes' spacing (so, likely, the ``off`` server's probe without an alert at 800 in the run of 2026-12-06 11:00).

A quick try of one server (``BENCH_RUSH_CONFIGS=on``, ``BENCH_RUSH_FROM=800``, ``BENCH_BUDGET_SCALE=0.25``) prints its
steps and then its pooled alerts, every one (a JSON line, ``{"rush_try": ...}``: not a result): a change is judged by
such tries taken in turns with and without it, their alerts pooled, and more probes (``BENCH_RUSH_PROBES=14``) give
the burst's tail more alerts to stand on (docs/operations.md, "The morning rush")."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from beanie import PydanticObjectId
from pymongo import AsyncMongoClient

from bench._common import REPEATS, SMOKE, Budget, CpuMeter, cpu_s, emit, pct, rounded, server_pids, start
from bench._rush_loader import loader_main
from bench._seed import Seeder, server_env
from bench._servers import NO_HEARTBEATS, UNLIMITED, Helpers, Store, Window, embedded_store, start_server, stop

# From 400 (both passed 100 and 200 in every run of 2026-12, and the budget ended before a failing step); overridable.
N_FROM = int(os.environ.get("BENCH_RUSH_FROM", 6 if SMOKE else 400))
N_MAX = 6 if SMOKE else 6400
WINDOW_S = 2.0 if SMOKE else 10.0
COMPRESSION = 300 / WINDOW_S
STORED_S = 5.0 if SMOKE else 15.0
LOADERS = 3  # the last: the patients in crisis (loader_of)
IDLE_ALERTS = 3 if SMOKE else 10
# The probe alerts, sent so long after due time, in the burst: at 10, 20, 30, 40% of the window (or n, evenly to 40%;
# keep them further apart than the slowest alert: they are one patient's)
PROBE_COUNT = int(os.environ.get("BENCH_RUSH_PROBES", 4))
PROBES = [WINDOW_S * 0.4 * (k + 1) / PROBE_COUNT for k in range(PROBE_COUNT)]
LIMITS = {"reminder_p99_ms": 5000, "bp_ack_p99_ms": 1000, "alert_e2e_p99_ms": 1000}
FRAME_LOSS = 0.01
QUIET_CORE = 0.1  # the store counts as settled under a tenth of a core (over half a second)
SETTLE_MAX_S = 20.0
CONFIGS = tuple(os.environ.get("BENCH_RUSH_CONFIGS", "off,on").split(","))  # both for the line


def loader_of(i: int) -> int:
    """Which load generator holds patient ``i``'s sockets: the patients in crisis (and so their caregivers, who
    receive the alerts) in one of their own, the others shared among the rest."""
    return LOADERS - 1 if role_of(i)["crisis"] else i % (LOADERS - 1)


def shares(n: int) -> list[int]:
    """How many of the first ``n`` patients each load generator holds."""
    counts = [0] * LOADERS
    for i in range(n):
        counts[loader_of(i)] += 1
    return counts


def role_of(i: int) -> dict[str, bool]:
    """What patient ``i`` does besides their dose and reading (1% crisis, 10% ECG, 2% calls)."""
    return {"crisis": i % 100 == 7 or (SMOKE and i == 1), "ecg": i % 10 == 3,
            "calls": i % 50 == 5 or (SMOKE and i == 0)}


# --- the measuring process -----------------------------------------------------------------------------------------
class Server:
    """One configuration: its server, database, seeded patients and load generators; its step search."""

    def __init__(self, config: str, store: Store, bulk: Store, tmp: Path) -> None:
        self.config, self.store, self.db_name = config, store, f"bench_rush_{config}"
        self.bulk = bulk if config == "on" else None  # the bulk collections' own store: "on" only
        self.stores = [store, bulk]  # both settle before a step, whoever's it is
        self.proc, self.url, _ = start_server(str(tmp / f"data-{config}"), **server_env(store.url, self.db_name),
                                              **UNLIMITED, HEALTHMATE_GROUP_COMMIT=config,
                                              HEALTHMATE_URGENT_FIRST=config, **NO_HEARTBEATS,
                                              **({"HEALTHMATE_BULK_MONGODB_URL": bulk.url} if self.bulk else {}))
        self.loaders = Helpers(loader_main, [() for _ in range(LOADERS)])
        self.rows: list[dict[str, Any]] = []
        self.steps: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.failed_at: int | None = None
        self.idle_e2e: list[float | None] = []
        self.repeats: list[dict[str, Any]] = []  # the best step again, each after its own idle alerts
        self.step_s: dict[int, float] = {}  # patients -> how long that step took (growth aside)
        self.client: AsyncMongoClient = AsyncMongoClient(store.url, tz_aware=True)
        self.db = self.client[self.db_name]
        self.bulk_client: AsyncMongoClient | None = AsyncMongoClient(bulk.url, tz_aware=True) if self.bulk else None
        self.bulk_db = self.bulk_client[self.db_name] if self.bulk_client else self.db  # doses, notifications
        pids = {"store": [store.pid, bulk.pid], "bulk_store": [bulk.pid]} if self.bulk else {"store": [store.pid]}
        self.window = Window(CpuMeter(server=lambda: server_pids(self.proc.pid), loaders=lambda: self.loaders.pids,
                                      **pids), (self.url,))

    async def grow(self, n: int) -> None:
        """Seed and connect patients up to ``n``."""
        if n <= len(self.rows):
            return
        first = len(self.rows)
        async with Seeder(self.store.url, self.db_name) as seed:
            seed._made = first  # unique e-mail addresses past the ones made before
            patients = await seed.users("patient", n - first)
            carers = await seed.users("caregiver", n - first)
            await seed.link(list(zip(patients, carers, strict=True)))
            boxes = await seed.devices(patients, kind="medicine_box")
            roles = [role_of(first + k) for k in range(len(patients))]
            ecg = await seed.devices([p for p, r in zip(patients, roles, strict=True) if r["ecg"]], kind="ecg")
        credentials = iter(ecg)
        new = [{"patient_id": p.id, "patient_token": p.token, "carer_token": c.token, **r, "box_credential": box,
                "ecg_credential": next(credentials) if r["ecg"] else None}
               for p, c, r, box in zip(patients, carers, roles, boxes, strict=True)]
        self.rows += new
        await self.loaders.ask([("add", self.url, [r for k, r in enumerate(new, first) if loader_of(k) == j])
                                for j in range(LOADERS)])

    async def doses(self, n: int, due: datetime) -> list[str]:
        rows = [{"schema_version": 1, "patient_id": PydanticObjectId(r["patient_id"]),
                 "medication_id": PydanticObjectId(), "slot": f"rush-{due.timestamp()}-{i}", "timezone": "UTC",
                 "due_at": due, "medication_name": "Metformin", "dose": "1 tablet", "drawer": 1, "state": "scheduled",
                 "created_at": datetime.now(UTC)}
                for i, r in enumerate(self.rows[:n])]
        ids = []
        for k in range(0, n, 2000):
            ids += (await self.bulk_db.dose_events.insert_many(rows[k:k + 2000])).inserted_ids
        return [str(i) for i in ids]

    async def settle(self, server: bool = False) -> float:
        """Wait (at most SETTLE_MAX_S) until the shared store is settled: the other server's step, and this one's
        growth, have finished their work, which would otherwise run into this step's timings and CPU (``server``:
        this server too, after the seeding or after the larger steps' patients left). Seconds waited."""
        t0 = time.monotonic()
        pids = [s.pid for s in self.stores] + (server_pids(self.proc.pid) if server else [])
        while time.monotonic() - t0 < SETTLE_MAX_S:
            before = [cpu_s(p) for p in pids]
            await asyncio.sleep(0.5)
            after = [cpu_s(p) for p in pids]
            if all(b is None or a is None or a - b < QUIET_CORE * 0.5 for b, a in zip(before, after, strict=True)):
                break
        return time.monotonic() - t0

    async def trim(self, n: int) -> bool:
        """Only the first ``n`` patients stay connected: a step plays with its own N connected, not with a larger
        step's (the step between the last passing one and a failing one, and the repeats; with 1,600 patients'
        sockets connected the server's young collections took 60-150 ms, at most 75 at 800). Whether any left."""
        if len(self.rows) <= n:
            return False
        await self.loaders.ask([("trim", c) for c in shares(n)])
        self.rows = self.rows[:n]
        return True

    async def step(self, n: int, budget: Budget) -> dict[str, Any]:
        t = time.monotonic()
        trimmed = await self.trim(n)
        await self.grow(n)
        grow_s = time.monotonic() - t
        settle_s = await self.settle(server=trimmed)  # (once the server too has settled after they left)
        readings_before = await self.db.bp_readings.count_documents({})
        reminders_before = await self.bulk_db.notifications.count_documents({"kind": "reminder"})
        due = datetime.now(UTC) + timedelta(seconds=2.0 + n / 2000)
        ids = await self.doses(n, due)
        due_s = due.timestamp()
        counts_share = shares(n)
        ask = asyncio.ensure_future(self.loaders.ask([("rush", c, due_s, WINDOW_S, PROBES) for c in counts_share]))
        await asyncio.sleep(max(0.0, due_s - 0.5 - time.time()))
        self.window.open()
        replies = await ask
        received = {k: v for r in replies for k, v in r["doses"].items()}
        lags = [(received[i] - due_s) * 1000 for i in ids if i in received]
        e2e = [x for r in replies for x in r["alert_e2e"]]
        frames_sent = sum(r["frames_sent"] for r in replies)
        out = {"patients": n, "reminder_p99_ms": rounded(pct(lags, 99)), "reminder_p50_ms": rounded(pct(lags, 50)),
               "bp_ack_p99_ms": rounded(pct([a for r in replies for a in r["bp_acks"]], 99)),
               "alert_e2e_p99_ms": None if None in e2e else rounded(pct(e2e, 99)), "alerts": len(e2e),
               "alerts_missing": e2e.count(None),
               "alert_e2e_ms": sorted(rounded(x) for x in e2e if x is not None),  # (few: the p99 is their slowest)
               "alert_burst_ms": [rounded(x) for r in replies for x in r["alert_burst"]],  # (None: it never came)
               "loader_lag_p99_ms": rounded(pct([x for r in replies for x in r["lags"]], 99)),
               "frame_loss": 1 - sum(r["frames_received"] for r in replies) / frames_sent if frames_sent else 0.0,
               "calls": sum(len(r["call_setup"]) for r in replies),
               "calls_failed": sum(r["calls_failed"] for r in replies),
               "call_setup_p99_ms": rounded(pct([x for r in replies for x in r["call_setup"]], 99)),
               "doses_missing": n - len(lags), "bp_sent": sum(r["bp_sent"] for r in replies),
               "bp_errors": sum(r["bp_errors"] for r in replies), "bp_acked": sum(len(r["bp_acks"]) for r in replies)}
        # Every reminder notification stored (each arrives on its phone once stored: the loaders are asked, not the
        # store, whose CPU is measured), at most STORED_S, not past the budget; after a failed step too: what a step
        # leaves the store doing runs into the next one (not waiting, the steps after 800 had every dose missing).
        deadline = time.monotonic() + min(STORED_S, max(1.0, budget.left() - 20))
        while time.monotonic() < deadline:
            if sum(await self.loaders.ask([("reminded",)] * LOADERS)) >= n:
                break
            await asyncio.sleep(0.5)
        self.window.close()
        out.update({"reminders_stored": await self.bulk_db.notifications.count_documents({"kind": "reminder"})
                    - reminders_before, "bp_stored": await self.db.bp_readings.count_documents({}) - readings_before,
                    "store_cmds_per_patient": (self.window.store_commands or 0) / n,
                    "server_cpu_s": self.window.cpu.get("server"), "store_cpu_s": self.window.cpu.get("store"),
                    "bulk_store_cpu_s": self.window.cpu.get("bulk_store"),
                    "loaders_cpu_s": self.window.cpu.get("loaders"),
                    "seconds": self.window.seconds, "settle_s": round(settle_s, 1), "grow_s": round(grow_s, 1)})
        out["passed"] = self.passes(out)
        return out

    @staticmethod
    def passes(s: dict[str, Any]) -> bool:
        within = all(s[k] is not None and s[k] < limit for k, limit in LIMITS.items() if k != "alert_e2e_p99_ms")
        alerts_ok = s["alerts"] == 0 or (s["alert_e2e_p99_ms"] is not None
                                         and s["alert_e2e_p99_ms"] < LIMITS["alert_e2e_p99_ms"])
        nothing_lost = (not s["doses_missing"] and not s["bp_errors"] and s["bp_acked"] == s["bp_sent"]
                        and s["bp_stored"] >= s["bp_acked"] and s["reminders_stored"] >= s["patients"])
        return within and alerts_ok and nothing_lost and s["frame_loss"] <= FRAME_LOSS and not s["calls_failed"]

    def next_n(self) -> int | None:
        """The next step of the search: doubling from N_FROM until one fails, then once between."""
        if self.failed_at is None:
            n = N_FROM if self.best is None and not self.steps else 2 * self.steps[-1]["patients"]
            return n if n <= N_MAX else None
        low = self.best["patients"] if self.best else 0
        first_failed = next(i for i, s in enumerate(self.steps) if not s["passed"])
        if first_failed < len(self.steps) - 1 or self.failed_at - low <= max(2, low // 8):  # once between
            return None
        return round((low * self.failed_at) ** 0.5) if low else self.failed_at // 2

    def record(self, s: dict[str, Any]) -> None:
        self.steps.append(s)
        if s["passed"]:
            if self.best is None or s["patients"] > self.best["patients"]:
                self.best = s
        elif self.failed_at is None or s["patients"] < self.failed_at:
            self.failed_at = s["patients"]
        print(f"  {self.config}: {s['patients']} patients {'passed' if s['passed'] else 'FAILED'}: reminder p99 "
              f"{s['reminder_p99_ms']} ms, BP ack p99 {s['bp_ack_p99_ms']} ms, alert e2e p99 {s['alert_e2e_p99_ms']} ms"
              f" ({s['alerts']} alerts: {s['alert_e2e_ms']}; probes in the burst: {s['alert_burst_ms']}; "
              f"loader lag p99 {s['loader_lag_p99_ms']} ms), "
              f"frames lost {s['frame_loss']:.3f}, calls {s['calls']} ({s['calls_failed']} failed), doses missing "
              f"{s['doses_missing']}, readings {s['bp_acked']}/{s['bp_sent']} acked {s['bp_stored']} stored, reminders "
              f"stored {s['reminders_stored']}; {s['store_cmds_per_patient']:.1f} store cmds per patient, CPU server "
              f"{s['server_cpu_s']:.1f} s store {s['store_cpu_s']:.1f} s"
              + (f" (of it the bulk store {s['bulk_store_cpu_s']:.1f} s)" if s.get("bulk_store_cpu_s") is not None
                 else "") + f", the load generators {s['loaders_cpu_s']:.1f} s over {s['seconds']:.1f} s"
              f" (the stores settled {s['settle_s']} s)",
              flush=True)

    async def idle(self) -> tuple[float | None, list[float | None]]:
        """IDLE_ALERTS crisis readings one after another on the idle server, after one not counted; all e2e ms."""
        holder = loader_of(next(i for i in range(len(self.rows)) if role_of(i)["crisis"]))  # its sockets' loader
        first, *rest = (await self.loaders.ask([("idle_alerts", 1 + IDLE_ALERTS if k == holder else 0)
                                                for k in range(LOADERS)]))[holder]
        return first, rest

    async def repeat(self, budget: Budget) -> None:
        """The best step again, after idle alerts of its own (the stores settled first): one more ratio."""
        assert self.best is not None
        n = self.best["patients"]
        await self.settle(server=await self.trim(n))
        _, idle = await self.idle()
        s = await self.step(n, budget)
        idle_p99 = pct([x for x in idle if x is not None], 99)
        ratio = s["alert_e2e_p99_ms"] / idle_p99 if s["alert_e2e_p99_ms"] and idle_p99 else None
        kept = ("patients", "passed", "alert_e2e_p99_ms", "alert_e2e_ms", "alert_burst_ms", "reminder_p99_ms",
                "bp_ack_p99_ms")
        self.repeats.append({**{k: s[k] for k in kept}, "alert_e2e_p99_ms_idle": rounded(idle_p99),
                             "alert_e2e_idle_ms": sorted(rounded(x) for x in idle if x is not None),
                             "alert_e2e_ratio": rounded(ratio)})
        print(f"  {self.config}: {s['patients']} patients again: idle alert e2e p99 {rounded(idle_p99)} ms, under the "
              f"rush {s['alert_e2e_p99_ms']} ms ({s['alert_e2e_ms']}; probes {s['alert_burst_ms']}): "
              f"{rounded(ratio)}x; {'passed' if s['passed'] else 'FAILED'}", flush=True)

    def ratios(self) -> list[float]:
        """Alert e2e p99 under the rush against idle: the best step's (against the idle alerts before the search),
        then each repeat's."""
        idle = pct([x for x in self.idle_e2e if x is not None], 99)
        first = [self.best["alert_e2e_p99_ms"] / idle] if self.best and self.best["alert_e2e_p99_ms"] and idle else []
        return first + [r["alert_e2e_ratio"] for r in self.repeats if r["alert_e2e_ratio"] is not None]

    def pools(self) -> dict[str, list[float]]:
        """Every alert of the best step and its repeats (``rush``; the probes: ``burst``), and every idle alert timed
        before them (ms)."""
        if self.best is None:
            return {}
        idle = [x for x in self.idle_e2e if x is not None] + [x for r in self.repeats for x in r["alert_e2e_idle_ms"]]
        return {"idle": idle, "rush": self.best["alert_e2e_ms"] + [x for r in self.repeats for x in r["alert_e2e_ms"]],
                "burst": [x for p in [self.best, *self.repeats] for x in p["alert_burst_ms"] if x is not None]}

    def pooled(self) -> dict[str, Any]:
        """The pools' quantiles and their ratios: with 8 alerts a play a step's "p99" is its slowest, so the quantiles
        over all plays are the steadier figure."""
        if not (pools := self.pools()):
            return {}
        out: dict[str, Any] = {"plays": 1 + len(self.repeats)}
        for name, pool in pools.items():
            out[name] = {"n": len(pool), **{f"p{q}_ms": rounded(pct(pool, q)) for q in (50, 90, 99)}}
        out["ratio"] = {f"p{q}": rounded(out["rush"][f"p{q}_ms"] / out["idle"][f"p{q}_ms"])
                        for q in (50, 90, 99) if out["rush"]["n"] and out["idle"][f"p{q}_ms"]}
        # The goal as a share: p99 within 2x of idle leaves at most 1% slower than that. Each play's alerts
        # against its own idle alerts, timed just before it: one slow idle alert (76 ms among 16 ms ones, 2026-12-07;
        # the disk's sync stalls make such) then loosens its own play's bound only, not every play's.
        plays = [(self.idle_e2e, self.best)] + [(r["alert_e2e_idle_ms"], r) for r in self.repeats]
        timed = late = judged = 0
        for idle, play in plays:
            idle_p99 = pct([x for x in idle if x is not None], 99)
            if idle_p99 is None:  # (no idle alert came: nothing to judge this play against)
                continue
            alerts = play["alert_e2e_ms"] + [x for x in play["alert_burst_ms"] if x is not None]
            judged, timed, late = judged + 1, timed + len(alerts), late + sum(x > 2 * idle_p99 for x in alerts)
        if judged:
            out["over_2x_idle_p99"] = {"alerts": timed, "slower": late,
                                       "share": rounded(late / timed) if timed else None}
        return out

    async def close(self) -> None:
        await self.loaders.stop()
        await self.client.close()
        if self.bulk_client is not None:
            await self.bulk_client.close()
        stop(self.proc)


async def run(budget: Budget, tmp: Path) -> dict[str, Server]:
    with embedded_store(tmp / "store") as store, embedded_store(tmp / "bulk") as bulk:
        servers: dict[str, Server] = {}
        try:
            for config in CONFIGS:
                servers[config] = Server(config, store, bulk, tmp)
            for s in servers.values():
                await s.grow(N_FROM)
                await s.settle(server=True)  # (timed before, the slowest idle alert was 40-63 ms in 5 of 13 runs)
                first, s.idle_e2e = await s.idle()
                idle = rounded(pct([x for x in s.idle_e2e if x is not None], 99))
                print(f"  {s.config}: idle alert e2e p99 {idle} ms (the first after start-up, not counted: "
                      f"{rounded(first)} ms)", flush=True)
            longest, longest_n, grow_per_patient, turn = 0.0, 1, 0.0, 0
            while True:
                todo = [(s, n) for s in servers.values() if (n := s.next_n()) is not None]
                if not todo:
                    break
                # A step: the longest so far (growth aside) scaled by its patients, plus seeding the new ones if any.
                need = sum(longest * max(1.0, n / longest_n) + grow_per_patient * max(0, n - len(s.rows))
                           for s, n in todo)
                if not budget.allows(need + 10, "search steps"):
                    break
                for position, (s, n) in enumerate(todo if turn % 2 == 0 else todo[::-1]):
                    t, grown = time.monotonic(), len(s.rows)
                    s.record({**await s.step(n, budget), "position": position + 1})
                    grow_s = s.steps[-1]["grow_s"]
                    grow_per_patient = max(grow_per_patient, grow_s / max(1, n - grown))
                    s.step_s[n] = work_s = time.monotonic() - t - grow_s
                    if work_s > longest:
                        longest, longest_n = work_s, n
                turn += 1
            # The alert ratio is a slowest-of-a-few against a slowest-of-ten: the best step again, REPEATS in all.
            for _ in range(REPEATS - 1):
                todo = [s for s in servers.values() if s.best is not None]
                need = sum(s.step_s[s.best["patients"]] + 5 for s in todo)  # as long as it took (+ idle alerts)
                if not todo or not budget.allows(need + 10, "alert repeats"):
                    break
                for s in todo if turn % 2 == 0 else todo[::-1]:
                    await s.repeat(budget)
                turn += 1
            return servers
        finally:
            for s in servers.values():
                with contextlib.suppress(Exception):
                    await s.close()


def figures(s: Server, suffix: str) -> dict[str, Any]:
    best, ratios = s.best or {}, s.ratios()
    idle = [x for x in s.idle_e2e if x is not None]
    keys = ("reminder_p99_ms", "bp_ack_p99_ms", "alert_e2e_p99_ms", "store_cmds_per_patient", "server_cpu_s",
            "store_cpu_s", "bulk_store_cpu_s", "loaders_cpu_s", "frame_loss", "call_setup_p99_ms")
    return {f"patients{suffix}": best.get("patients", 0), **{f"{k}{suffix}": rounded(best.get(k)) for k in keys},
            f"alert_e2e_p99_ms_idle{suffix}": rounded(pct(idle, 99)),
            # under the rush against idle (the goal: within 2x): the median over the best step and its repeats
            f"alert_e2e_ratio{suffix}": rounded(statistics.median(ratios)) if ratios else None,
            f"alert_e2e_ratio_range{suffix}": [rounded(min(ratios)), rounded(max(ratios))] if ratios else None,
            f"alert_e2e_ratios{suffix}": [rounded(r) for r in ratios],
            f"alert_repeats{suffix}": s.repeats,
            # [passed, played]: the best step and its repeats (a step passing once may fail when played again)
            f"plays_passed{suffix}": [1 + sum(r["passed"] for r in s.repeats), 1 + len(s.repeats)] if best else None,
            f"alert_e2e_pooled{suffix}": s.pooled(),
            f"alert_burst_ms{suffix}": best.get("alert_burst_ms"),
            f"top_reached{suffix}": s.failed_at is not None}


def main() -> None:
    budget = start("rush")
    with tempfile.TemporaryDirectory(prefix="bench-rush-") as tmp:
        servers = asyncio.run(run(budget, Path(tmp)))
    if set(servers) != set(("off", "on")):  # a quick try of one (BENCH_RUSH_CONFIGS): its steps were printed
        for s in servers.values():
            print(json.dumps({"rush_try": s.config, "pooled": s.pooled(), "alerts": s.pools()}))
        return
    off, on = servers["off"], servers["on"]
    on_figures = figures(on, "")
    on_figures["alert_e2e_p99_ms_on"] = on_figures["alert_e2e_p99_ms"]  # (the key the issue names, and the table's)
    emit(budget, {"patients": [on_figures.pop("patients")], "patients_off": [(off.best or {}).get("patients", 0)]},
         **on_figures, **{k: v for k, v in figures(off, "_off").items() if k != "patients_off"},
         steps={c: [{k: rounded(v) if isinstance(v, float) else v for k, v in st.items()} for st in s.steps]
                for c, s in servers.items()},
         window_s=WINDOW_S, compression=COMPRESSION,
         note=f"08:00-08:05 compressed into {WINDOW_S:g} s (x{COMPRESSION:g}); figures of the largest passing step; "
              "off = HEALTHMATE_GROUP_COMMIT=off and HEALTHMATE_URGENT_FIRST=off (the path before issue 18, as far as "
              "settings reach), on = both on",
         process="one healthmate serve",
         store="embedded SecantusDB (on: the bulk collections in a second process; store_cpu_s is both's)")


if __name__ == "__main__":
    main()
