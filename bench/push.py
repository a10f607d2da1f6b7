"""Push: a crisis alert reaching DEVICES offline phones through the durable outbox, against a local APNs
receiver speaking HTTP/2 (tests/push_receivers.py, in this process), on one server process on the embedded
store.

DEVICES caregivers, each with one APNs registration and no socket, are linked to one patient per round
(accounts, links and registrations seeded into the store). Each round (REPEATS), the headline, then the baseline:

- headline: the patient's socket sends one crisis reading (``bp:add``). ``alert_to_push`` of a phone: from
  just before that send to the receiver answering 200 to the push carrying the alert's collapse id for that
  phone (the alert stored and fanned out, one notification per caregiver, one outbox entry per registration
  written, queued, sent, removed); ``alert_to_first_push_ms``: the same to the first phone's answer.
  ``pushes_per_s``: DEVICES / (the last phone's answer - the send).
  ``outbox_depth_max``: the most entries waiting in the outbox, counted in the store every 200 ms or so.
  ``cpu_us_per_push``: CPU of the server and the store over the round, per push; ``store_commands_per_push``:
  the server's store commands over it.
- baseline (``baseline_*``): the same DEVICES pushes (same provider code, message and tokens) sent straight, with
  no alert, notification or outbox, by a separate process with as many concurrent senders as the server's push
  workers (``workers``): from just before its first send to each answer; ``pushes_per_s_ratio`` =
  pushes_per_s / baseline_pushes_per_s, ``p50_ratio`` = alert_to_push_p50_ms / baseline_p50_ms.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from beanie import PydanticObjectId
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pymongo import AsyncMongoClient

from bench._common import REPEATS, SMOKE, Budget, CpuMeter, emit, pct, per_op_us, rounded, server_pids, start
from bench._seed import Account, Seeder, server_env
from bench._servers import Window, embedded_store, start_server, stop
from bench._sio import SioClient

DEVICES = 20 if SMOKE else 1000
WORKERS = 8  # the server's default push_workers
DB = "bench_push"
TOPIC = "org.healthmate.bench"
CRISIS = {"systolic": 192, "diastolic": 124, "pulse": 101}
WAIT_S = 60.0


def apns_env(endpoint: str, key_pem: str) -> dict[str, str]:
    return {"HEALTHMATE_APNS_TEAM_ID": "TEAM123456", "HEALTHMATE_APNS_KEY_ID": "KEY1234567",
            "HEALTHMATE_APNS_PRIVATE_KEY": key_pem, "HEALTHMATE_APNS_TOPIC": TOPIC,
            "HEALTHMATE_APNS_ENDPOINT": endpoint, "HEALTHMATE_PUSH_WORKERS": str(WORKERS)}


async def seed(store_url: str) -> tuple[list[Account], list[str]]:
    """REPEATS patients, DEVICES caregivers linked to each, one APNs registration per caregiver."""
    from server.alerts.documents import PushToken

    async with Seeder(store_url, DB) as seeder:
        patients = await seeder.users("patient", REPEATS)
        carers = await seeder.users("caregiver", DEVICES)
        await seeder.link([(p, c) for p in patients for c in carers])
        tokens = [secrets.token_hex(32) for _ in carers]
        await PushToken.insert_many([PushToken(id=f"{c.id}:phone:apns", user_id=PydanticObjectId(c.id),
                                               device_id="phone", provider="apns", token=t)
                                     for c, t in zip(carers, tokens, strict=True)])
    return patients, tokens


async def collect(receiver: Any, since: int, budget: Budget, collapse_id: str | None = None,
                  outbox: Any = None) -> tuple[list[float], int]:
    """The receiver's answer times of the DEVICES pushes carrying ``collapse_id`` (None: the first accepted one's),
    and the most entries waiting in ``outbox`` meanwhile (counted every 200 ms or so)."""
    depth_max, times, polls = 0, [], 0
    deadline = time.monotonic() + min(WAIT_S, max(budget.left() - 5, 5))
    while time.monotonic() < deadline:
        polls += 1
        if outbox is not None and polls % 4 == 1:  # a count costs the store tens of ms at this depth
            depth_max = max(depth_max, await outbox.count_documents({"next_attempt_at": {"$ne": None}}))
        new = receiver.accepted[since:]
        collapse_id = collapse_id or (new[0].headers["apns-collapse-id"] if new else None)
        times = [r.at for r in new if r.headers.get("apns-collapse-id") == collapse_id]
        if len(times) >= DEVICES:
            return times, depth_max
        await asyncio.sleep(0.05)
    budget.cut.append(f"stopped waiting for pushes ({len(times)} of {DEVICES} arrived)")
    return times, depth_max


async def headline(url: str, patient: Account, receiver: Any, outbox: Any, window: Window,
                   budget: Budget) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        sock = SioClient(http)
        await sock.connect(url, {"token": patient.token})
        since = len(receiver.accepted)
        window.open()
        t0 = time.time()
        reading = asyncio.create_task(sock.call("bp:add", {**CRISIS, "measured_at": datetime.now(UTC).isoformat()}))
        times, depth_max = await collect(receiver, since, budget, outbox=outbox)
        window.close()
        reply = await reading
        if reply.get("ok") is False:
            print(f"  bp:add answered {str(reply)[:300]}", flush=True)
        await sock.disconnect()
    lat = [(t - t0) * 1000 for t in times]
    return {"alert_to_push_p50_ms": pct(lat, 50), "alert_to_push_p99_ms": pct(lat, 99),
            "alert_to_first_push_ms": min(lat, default=None),
            "pushes_per_s": len(times) / (max(times) - t0) if times else None, "outbox_depth_max": depth_max,
            "missing": DEVICES - len(times), "cpu_us_per_push": per_op_us(window.cpu, len(times) or 1),
            "store_commands_per_push": (window.store_commands or 0) / max(1, len(times))}


async def baseline(endpoint: str, key_file: str, tokens: list[str], receiver: Any, tag: str,
                   budget: Budget) -> dict[str, Any]:
    since = len(receiver.accepted)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.push", "baseline", endpoint, key_file,
                                                tag, *tokens, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    t0 = float(out.decode().split()[-1])
    times, _ = await collect(receiver, since, budget, collapse_id=tag)
    lat = [(t - t0) * 1000 for t in times]
    return {"baseline_p50_ms": pct(lat, 50), "baseline_p99_ms": pct(lat, 99),
            "baseline_pushes_per_s": len(times) / (max(times) - t0) if times else None}


async def send_straight(endpoint: str, key: str, tag: str, tokens: list[str]) -> None:
    """The baseline's process: WORKERS concurrent senders through the APNs provider; prints when it began."""
    from server.alerts.push_providers import APNsProvider, PushMessage

    apns = APNsProvider("TEAM123456", "KEY1234567", key, TOPIC, endpoint)
    message = PushMessage(title="Hypertensive crisis", body="Blood pressure 192/124 mmHg", urgency="high",
                          data={"kind": "alert", "alert_id": tag, "notification_id": str(PydanticObjectId())},
                          level="critical", collapse_id=tag, expires_at=time.time() + 86400)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for token in tokens:
        queue.put_nowait(token)

    async def worker() -> None:
        while not queue.empty():
            await apns.send(queue.get_nowait(), message)

    apns.provider_token()  # signed once, as the server's provider does before its first send
    t0 = time.time()
    await asyncio.gather(*(worker() for _ in range(WORKERS)))
    await apns.close()
    print(t0, flush=True)


async def measure(store_url: str, store_pid: int, tmp: Path, budget: Budget) -> list[dict[str, Any]]:
    from tests.push_receivers import receivers

    t = time.monotonic()
    patients, tokens = await seed(store_url)
    print(f"{DEVICES} phones and {REPEATS} patients seeded in {time.monotonic() - t:.1f} s", flush=True)
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    key_file = tmp / "apns.p8"
    key_file.write_text(key)
    rounds: list[dict[str, Any]] = []
    mongo: AsyncMongoClient = AsyncMongoClient(store_url, tz_aware=True)
    async with receivers() as receiver:
        proc, url, started_s = start_server(str(tmp / "data"), **server_env(store_url, DB),
                                            **apns_env(receiver.apns_base, key))
        print(f"server ready in {started_s:.1f} s ({budget.elapsed():.1f} s into the bench)", flush=True)
        try:
            window = Window(CpuMeter(server=lambda: server_pids(proc.pid), store=[store_pid]), (url,))
            for r in budget.rounds(REPEATS, "round", reserve=5.0):
                out = await headline(url, patients[r], receiver, mongo[DB]["push_outbox"], window, budget)
                out.update(await baseline(receiver.apns_base, str(key_file), tokens, receiver, f"baseline-{r}",
                                          budget))
                print(f"  round {r + 1}: alert to push p50 {rounded(out['alert_to_push_p50_ms'])} ms, p99 "
                      f"{rounded(out['alert_to_push_p99_ms'])} ms, {rounded(out['pushes_per_s'])} pushes/s, outbox "
                      f"depth max {out['outbox_depth_max']}, {out['missing']} missing, "
                      f"{rounded(out['store_commands_per_push'])} store commands/push; straight: p50 "
                      f"{rounded(out['baseline_p50_ms'])} ms, {rounded(out['baseline_pushes_per_s'])} pushes/s",
                      flush=True)
                rounds.append(out)
        finally:
            stop(proc)
            await mongo.close()
    return rounds


def main() -> None:
    if sys.argv[1:2] == ["baseline"]:
        endpoint, key_file, tag, *tokens = sys.argv[2:]
        asyncio.run(send_straight(endpoint, Path(key_file).read_text(), tag, tokens))
        return
    budget = start("push")
    with tempfile.TemporaryDirectory() as tmp, embedded_store(Path(tmp) / "store") as store:
        rounds = asyncio.run(measure(store.url, store.pid, Path(tmp), budget))
    for r in rounds:
        r["pushes_per_s_ratio"] = r["pushes_per_s"] / r["baseline_pushes_per_s"] \
            if r["pushes_per_s"] and r["baseline_pushes_per_s"] else None
        r["p50_ratio"] = r["alert_to_push_p50_ms"] / r["baseline_p50_ms"] \
            if r["alert_to_push_p50_ms"] and r["baseline_p50_ms"] else None
    keys = ("alert_to_push_p50_ms", "alert_to_push_p99_ms", "alert_to_first_push_ms", "pushes_per_s",
            "outbox_depth_max", "baseline_p50_ms",
            "baseline_p99_ms", "baseline_pushes_per_s", "pushes_per_s_ratio", "p50_ratio", "store_commands_per_push",
            "missing")
    emit(budget, {k: [r[k] for r in rounds] for k in keys}, devices=DEVICES, workers=WORKERS,
         cpu_us_per_push=rounds[-1]["cpu_us_per_push"] if rounds else None, provider="APNs (HTTP/2, local receiver)",
         store="embedded SecantusDB")


if __name__ == "__main__":
    main()
