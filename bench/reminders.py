"""Scheduler precision: 10,000 doses (100 patients, 100 each) fall due within two minutes; how late is
each reminder, from its due time to the moment the scheduler emits ``dose:due`` (timed where the server
hands the event to Socket.IO)? One server process on the embedded store, with the reminder
notifications (each persisted and pushed) running alongside. A connected patient's socket also
measures due time → ``dose:due`` received, for that patient's 100 doses. Store: SecantusDB (embedded)."""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import socketio
from aiohttp import web
from beanie import PydanticObjectId

from server.app import SERVER, create_app
from server.core.config import load_settings
from server.infra.embedded_store import EmbeddedStore, free_port

DOSES = 10_000
PATIENTS = 100
LEAD_S = 25.0  # the first dose falls due this long after the run starts (inserting them takes a while)
WINDOW_S = 120.0
PASSWORD = "bench-passphrase-long-enough-1"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        store = EmbeddedStore(Path(tmp))
        url = await store.start()
        settings = load_settings(mongodb_url=url, mongodb_db="bench_reminders", jwt_secret="b" * 48,
                                 data_dir=Path(tmp), port=free_port())
        runner = web.AppRunner(create_app(settings))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", settings.port).start()
        base = f"http://127.0.0.1:{settings.port}"
        try:
            return await measure(runner.app, base)
        finally:
            await runner.cleanup()
            await store.stop()


async def measure(app: web.Application, base: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.post(f"{base}/api/auth/register", json={
            "email": "bench@example.org", "password": PASSWORD, "name": "Bench", "role": "patient"}) as resp:
        me = await resp.json()
    received: list[float] = []
    client = socketio.AsyncClient(reconnection=False)

    @client.on("dose:due")
    async def on_due(dose: dict[str, Any]) -> None:
        due = datetime.fromisoformat(dose["due_at"].replace("Z", "+00:00")).timestamp()
        received.append((time.time() - due) * 1000)

    await client.connect(base, auth={"token": me["access_token"]}, transports=["websocket"])
    rt = app[SERVER].realtime
    emitted: dict[str, float] = {}
    to_patient = rt.to_patient

    async def timed(patient_id: Any, event: str, data: Any) -> None:
        if event == "dose:due":
            emitted[data["id"]] = time.time()
        await to_patient(patient_id, event, data)

    rt.to_patient = timed  # type: ignore[method-assign]
    patients = [PydanticObjectId(me["user"]["id"])] + [PydanticObjectId() for _ in range(PATIENTS - 1)]
    meds = {p: PydanticObjectId() for p in patients}
    first = datetime.now(UTC) + timedelta(seconds=LEAD_S)
    rows = [{"schema_version": 1, "patient_id": patients[i % PATIENTS], "medication_id": meds[patients[i % PATIENTS]],
             "slot": f"bench-{i}", "timezone": "UTC", "due_at": first + timedelta(seconds=WINDOW_S * i / DOSES),
             "medication_name": "Metformin", "dose": "1 tablet", "drawer": None, "state": "scheduled",
             "created_at": datetime.now(UTC)} for i in range(DOSES)]
    doses = app[SERVER].mongo["bench_reminders"]["dose_events"]  # type: ignore[index]
    t0 = time.monotonic()
    for i in range(0, DOSES, 2000):
        await doses.insert_many(rows[i:i + 2000])
    insert_s = time.monotonic() - t0
    deadline = time.monotonic() + LEAD_S + WINDOW_S + 60
    while time.monotonic() < deadline:
        if await doses.count_documents({"state": "reminded"}) == DOSES:
            break
        await asyncio.sleep(1)
    await asyncio.sleep(1)
    await client.disconnect()
    lags = [(emitted[str(r["_id"])] - r["due_at"].timestamp()) * 1000
            async for r in doses.find({"state": "reminded"}, {"due_at": 1}) if str(r["_id"]) in emitted]
    notes = await app[SERVER].mongo["bench_reminders"]["notifications"].count_documents({"kind": "reminder"})  # type: ignore[index]
    return {"lags": lags, "received": received, "insert_s": insert_s, "notifications": notes}


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    out = asyncio.run(run())
    lags, received = out["lags"], out["received"]
    figures = {"bench": "reminders", "doses": DOSES, "reminded": len(lags),
               "reminder_lag_p50_ms": round(pct(lags, 50), 1), "reminder_lag_p99_ms": round(pct(lags, 99), 1),
               "reminder_lag_max_ms": round(max(lags), 1), "reminder_lag_mean_ms": round(statistics.fmean(lags), 1),
               "received_p50_ms": round(pct(received, 50), 1) if received else None,
               "received_p99_ms": round(pct(received, 99), 1) if received else None,
               "window_s": WINDOW_S, "notifications": out["notifications"], "store": "embedded SecantusDB"}
    print(f"{len(lags)}/{DOSES} doses reminded over {WINDOW_S:.0f} s ({DOSES / WINDOW_S:.0f}/s; inserted in "
          f"{out['insert_s']:.1f} s); due → dose:due emitted p50 {figures['reminder_lag_p50_ms']} ms, "
          f"p99 {figures['reminder_lag_p99_ms']} ms, max {figures['reminder_lag_max_ms']} ms; one patient's socket "
          f"received its {len(received)} at p50 {figures['received_p50_ms']} ms")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
