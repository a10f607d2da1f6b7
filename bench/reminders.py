"""Reminders: DOSES doses falling due at the same instant (schedules have minute resolution: a ward's
08:00), on one server process on the embedded store.

PATIENTS patients (seeded), each with a connected socket (bench._sio, in this process), have DOSES
doses between them written into the store (``dose_events``, as the planner writes them). The lag of a
dose: from its due time to its patient's socket receiving ``dose:due`` for it, for every dose (not a
sample; a dose never received is counted in ``missing``). ``doses_per_s``: DOSES / (last dose received -
due time). Each round also waits until every reminder notification is stored (``notifications_s``: from due time to
the last one's ``notification:new`` reaching its patient's socket, which the server sends once it is stored; the
bench asks the store nothing while it waits, and counts them in the store once after: ``notifications_stored``;
null for a round whose wait the budget ended before they had all come, named in ``cut_for_budget``: not lost, not
waited for),
and measures from just before the due time to then: store commands per dose (the server's command
monitoring) and CPU per dose of the server, the store and the sockets (this process). REPEATS rounds, each
with DOSES new doses. After the rounds,
``idle_store_cores``: the store's CPU over IDLE_S seconds with nothing due, the doses reminded and unconfirmed
(as after 08:00 until the patients confirm): what the server's polls for leases that ran out and box commands
to resend cost it then (measured only once every reminder notification of the last round is stored, else
null).

Setting up a round: CALIBRATION doses due a day later are inserted and timed, then the round's doses are
inserted due at one time far enough ahead (1.5 x the time they should take, + 2 s) that they are all in
by then (``setup_late_ms`` > 0 says by how much they were not: the lag then includes the insertion)."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from beanie import PydanticObjectId
from pymongo import AsyncMongoClient

from bench._common import REPEATS, SMOKE, Budget, CpuMeter, cpu_s, emit, pct, per_op_us, server_pids, start
from bench._seed import Account, Seeder, server_env
from bench._servers import Store, Window, embedded_store, start_server, stop
from bench._sio import SioClient

DOSES = 20 if SMOKE else 10_000
PATIENTS = 5 if SMOKE else 250
CALIBRATION = 20 if SMOKE else 200  # doses timed going in before each round's
DB = "bench_reminders"
IDLE_S = 1.0 if SMOKE else 3.0
MAX_WAIT_S = 180.0  # the longest a round waits for its doses and notifications: what has not come by then is lost


class Patients:
    """Every patient's socket; when each dose's ``dose:due`` first arrived."""

    def __init__(self) -> None:
        self.received: dict[str, float] = {}
        self.noted: dict[str, float] = {}  # when each dose's reminder notification arrived (it is stored by then)
        self.repeats = 0
        self.http: aiohttp.ClientSession | None = None
        self.clients: list[SioClient] = []

    def _on_due(self, dose: dict[str, Any]) -> None:
        if dose["id"] in self.received:
            self.repeats += 1
        else:
            self.received[dose["id"]] = time.time()

    def _on_note(self, note: dict[str, Any]) -> None:
        if note.get("kind") == "reminder":
            self.noted.setdefault(note["data"]["dose_id"], time.time())

    async def connect(self, url: str, accounts: list[Account]) -> None:
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        sem = asyncio.Semaphore(16)

        async def one(account: Account) -> SioClient:
            client = SioClient(self.http)  # type: ignore[arg-type]
            client.on("dose:due", self._on_due)
            client.on("notification:new", self._on_note)
            async with sem:
                await client.connect(url, {"token": account.token})
            return client

        self.clients = list(await asyncio.gather(*(one(a) for a in accounts)))

    async def close(self) -> None:
        await asyncio.gather(*(c.disconnect() for c in self.clients), return_exceptions=True)
        if self.http:
            await self.http.close()


async def one_round(r: int, db: Any, patients: list[Account], sockets: Patients, window: Window,
                    budget: Budget) -> dict[str, Any]:
    meds = {p.id: PydanticObjectId() for p in patients}

    def rows(count: int, due: datetime, tag: str) -> list[dict[str, Any]]:
        return [{"schema_version": 1, "patient_id": PydanticObjectId(patients[i % PATIENTS].id),
                 "medication_id": meds[patients[i % PATIENTS].id], "slot": f"bench-{tag}-{r}-{i}", "timezone": "UTC",
                 "due_at": due, "medication_name": "Metformin", "dose": "1 tablet", "drawer": None,
                 "state": "scheduled", "created_at": datetime.now(UTC)} for i in range(count)]

    # How fast the store takes doses (a day ahead: they stay out of the way), so that the round's doses can
    # all be written due at one time still ahead once they are in (moving them afterwards costs far more).
    t = time.monotonic()
    await db.dose_events.insert_many(rows(CALIBRATION, datetime.now(UTC) + timedelta(days=1), "calibration"))
    per_dose_s = (time.monotonic() - t) / CALIBRATION
    due = datetime.now(UTC) + timedelta(seconds=2.0 + 1.5 * per_dose_s * DOSES)
    due_rows = rows(DOSES, due, "due")
    t = time.monotonic()
    ids = []
    for k in range(0, DOSES, 2000):
        ids += (await db.dose_events.insert_many(due_rows[k:k + 2000])).inserted_ids
    insert_s = time.monotonic() - t
    setup_late_ms = (datetime.now(UTC) - due).total_seconds() * 1000
    print(f"  round {r + 1}: {DOSES} doses inserted in {insert_s:.1f} s, due "
          + (f"{-setup_late_ms / 1000:.1f} s later" if setup_late_ms < 0 else f"{setup_late_ms:.0f} ms before"),
          flush=True)
    due_s = due.timestamp()
    await asyncio.sleep(max(0.0, due_s - 0.3 - time.time()))
    window.open()
    wanted, before = {str(i) for i in ids}, await db.notifications.count_documents({"kind": "reminder"})
    wait_s = min(MAX_WAIT_S, max(budget.left() - 20, 10.0))
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        if wanted.issubset(sockets.received) and wanted.issubset(sockets.noted):
            break
    window.close()
    stored = await db.notifications.count_documents({"kind": "reminder"}) - before
    stored_at = max(sockets.noted[i] for i in wanted) if wanted.issubset(sockets.noted) else None
    lags = [(sockets.received[i] - due_s) * 1000 for i in wanted if i in sockets.received]
    # The budget, not MAX_WAIT_S, ended the wait: what had not come yet is not lost, only not waited for, so the
    # round's counts of it say nothing (None: left out of the medians) and its cut is named.
    cut = stored_at is None and wait_s < MAX_WAIT_S
    doses_cut = cut and len(lags) < DOSES
    if cut:
        budget.cut.append(f"round {r + 1}: stopped waiting for " + ("doses and " if doses_cut else "")
                          + "notifications (not counted)")
    last = max(sockets.received[i] for i in wanted if i in sockets.received) if lags else None
    doses = {"lag_p50_ms": pct(lags, 50), "lag_p99_ms": pct(lags, 99), "lag_max_ms": max(lags, default=None),
             "missing": DOSES - len(lags), "doses_per_s": DOSES / (last - due_s) if last and last > due_s else None}
    out = {**({k: None for k in doses} if doses_cut else doses), "notifications_stored": None if cut else stored,
           "notifications_s": None if stored_at is None else stored_at - due_s,
           "store_commands_per_dose": (window.store_commands or 0) / DOSES,
           "cpu_us_per_dose": per_op_us(window.cpu, DOSES), "insert_s": insert_s, "setup_late_ms": setup_late_ms}
    print(f"  round {r + 1}: lag p50 {doses['lag_p50_ms'] or 0:.0f} ms, p99 {doses['lag_p99_ms'] or 0:.0f} ms, max "
          f"{doses['lag_max_ms'] or 0:.0f} ms, {doses['missing']} missing, {doses['doses_per_s'] or 0:.0f} doses/s; "
          f"{stored} notifications stored in {out['notifications_s'] or float('nan'):.1f} s"
          f"{' (the budget ended the wait: not counted)' if cut else ''}; "
          f"{out['store_commands_per_dose']:.2f} store commands/dose; CPU us/dose {out['cpu_us_per_dose']}", flush=True)
    return out


async def measure(store: Store, url: str, server_pid: int, budget: Budget) -> list[dict[str, Any]]:
    async with Seeder(store.url, DB) as seed:
        patients = await seed.users("patient", PATIENTS)
    sockets = Patients()
    t = time.monotonic()
    await sockets.connect(url, patients)
    print(f"{PATIENTS} patients' sockets connected in {time.monotonic() - t:.1f} s", flush=True)
    client: AsyncMongoClient = AsyncMongoClient(store.url, tz_aware=True)
    rounds = []
    try:
        window = Window(CpuMeter(server=lambda: server_pids(server_pid), store=[store.pid], sockets=[os.getpid()]),
                        (url,))
        for r in budget.rounds(REPEATS, "round", reserve=25):  # (the wait for a round's notifications leaves 20)
            rounds.append(await one_round(r, client[DB], patients, sockets, window, budget))
        rounds[-1]["repeated_deliveries"] = sockets.repeats
        rounds[-1]["idle_store_cores"] = None  # not if the server may still be storing notifications
        if (rounds[-1]["notifications_stored"] or 0) >= DOSES:
            before = cpu_s(store.pid) or 0.0
            await asyncio.sleep(IDLE_S)
            rounds[-1]["idle_store_cores"] = round(((cpu_s(store.pid) or 0.0) - before) / IDLE_S, 3)
    finally:
        await client.close()
        await sockets.close()
    return rounds


def main() -> None:
    budget = start("reminders")
    with tempfile.TemporaryDirectory() as tmp, embedded_store(Path(tmp) / "store") as store:
        proc, url, _ = start_server(str(Path(tmp) / "data"), **server_env(store.url, DB),
                                    HEALTHMATE_CONNECT_BURST="100000", HEALTHMATE_CONNECT_RATE_PER_S="100000")
        try:
            rounds = asyncio.run(measure(store, url, proc.pid, budget))
        finally:
            stop(proc)
    keys = ("lag_p99_ms", "lag_p50_ms", "lag_max_ms", "doses_per_s", "notifications_stored", "notifications_s",
            "store_commands_per_dose", "missing")
    emit(budget, {k: [r[k] for r in rounds] for k in keys}, doses=DOSES, patients=PATIENTS,
         cpu_us_per_dose=rounds[-1]["cpu_us_per_dose"], repeated_deliveries=rounds[-1]["repeated_deliveries"],
         idle_store_cores=rounds[-1]["idle_store_cores"], reminded_doses=DOSES * len(rounds),
         setup_late_ms=max(0, round(max(r["setup_late_ms"] for r in rounds))), store="embedded SecantusDB")


if __name__ == "__main__":
    main()
