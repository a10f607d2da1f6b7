"""``healthmate simulate``: a real device over Socket.IO streaming NeuroKit2-generated ECG/PPG.

It pairs itself through REST with a patient's login (or uses a given device credential),
opens a stream and sends binary float32 frames in real time. Scenarios come from
``devices.signal_scenarios``; ``network_drop`` really disconnects and reconnects, carrying on
with the next sequence number so the server records the gap.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
import socketio

from devices.medicine_box import BOX_SCENARIOS
from devices.signal_scenarios import drop_schedule, scenario_signal
from devices.simulators import box as simulate_box

log = logging.getLogger("healthmate.simulate")
SCENARIOS = ("normal", "exercise_ramp", "bradycardia", "tachycardia", "irregular", "ectopic", "motion_artefacts",
             "lead_off", "sensor_off", "clipping", "network_drop")


@dataclass
class DeviceRun:
    url: str
    credential: str
    kind: str = "ecg"
    sampling_rate: float = 250.0
    scenario: str = "normal"
    heart_rate: float = 72.0
    seed: int = 0
    frame_s: float = 1.0
    duration_s: float | None = None
    clock_drift_ppm: float = 0.0
    drop_online_s: int = 20  # network_drop: online this long, then offline for drop_offline_s, repeating
    drop_offline_s: int = 8
    frames_sent: int = 0
    frames_acked: int = 0
    stream_id: str | None = None
    reopen: bool = False  # the server answered unknown_stream: open a new stream before the next frame


async def pair_device(url: str, email: str, password: str, kind: str) -> str:
    """Log in as the patient and pair a new simulated device; return its credential."""
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/api/auth/login", json={"email": email, "password": password}) as resp:
            body = await resp.json()
            if resp.status != 200:
                raise SystemExit(f"login failed: {body['error']['message']}")
        headers = {"Authorization": f"Bearer {body['access_token']}"}
        serial = f"SIM-{kind.upper()}-{secrets.token_hex(3)}"
        async with http.post(f"{url}/api/patients/{body['user']['id']}/devices", headers=headers,
                             json={"kind": kind, "serial": serial, "model": "Health Mate simulator"}) as resp:
            paired = await resp.json()
            if resp.status != 201:
                raise SystemExit(f"pairing failed: {paired['error']['message']}")
    return paired["credential"]


async def _connect(run: DeviceRun) -> socketio.AsyncClient:
    client = socketio.AsyncClient(reconnection=False)
    try:
        await client.connect(run.url, auth={"device_token": run.credential}, transports=["websocket"],
                             wait_timeout=10)
    except BaseException:
        await client.shutdown()  # closes its HTTP session too
        raise
    return client


async def stream(run: DeviceRun, stop: asyncio.Event | None = None) -> DeviceRun:
    """Stream in real time until ``duration_s`` passes or ``stop`` is set."""
    stop = stop or asyncio.Event()
    client = await _connect(run)
    try:
        await _open(client, run)
    except BaseException:
        await client.disconnect()
        raise
    offline = drop_schedule(run.scenario, run.seed, run.drop_online_s, run.drop_offline_s)
    per_frame = max(1, round(run.sampling_rate * run.frame_s))
    loop = asyncio.get_running_loop()
    boot_ms = secrets.randbelow(10_000_000)  # the device's clock: ms since its own boot
    seq = 0
    pending: set[asyncio.Task[Any]] = set()
    signal = scenario_signal(run.kind, run.scenario, run.sampling_rate, run.heart_rate, run.seed)
    # NeuroKit2 takes ~0.1 s to simulate a chunk: made in a thread (this loop may be the server's), one
    # chunk ahead, so frames leave on time.
    buffer: list[float] = (await asyncio.to_thread(next, signal)).tolist()
    upcoming = asyncio.ensure_future(asyncio.to_thread(next, signal))
    start = loop.time()
    try:
        while not stop.is_set():
            elapsed = seq * per_frame / run.sampling_rate
            if run.duration_s is not None and elapsed >= run.duration_s:
                break
            while len(buffer) < per_frame:
                buffer.extend((await upcoming).tolist())
                upcoming = asyncio.ensure_future(asyncio.to_thread(next, signal))
            samples, buffer = buffer[:per_frame], buffer[per_frame:]
            # Real time: a frame leaves when its last sample has been "measured".
            due = start + elapsed + run.frame_s
            await asyncio.sleep(max(0.0, due - loop.time()))
            t0 = boot_ms + elapsed * 1000 * (1 + run.clock_drift_ppm / 1e6)
            if offline(int(elapsed)):
                if client.connected:
                    log.info("network drop: device offline")
                    if pending:  # the frames already sent get through; those measured offline are lost
                        await asyncio.wait(pending, timeout=2)
                    await client.disconnect()
                seq += 1
                continue
            if not client.connected:
                try:
                    client = await _connect(run)
                except (socketio.exceptions.ConnectionError, OSError) as exc:
                    log.info("device cannot reach the server (%s); frame %d lost", exc, seq)
                    seq += 1
                    continue
                log.info("device back online; resuming at seq %d", seq)
            if run.reopen:  # the server no longer knows our stream (it restarted): a new one
                await _open(client, run)
            payload = {"stream_id": run.stream_id, "seq": seq, "t0": round(t0, 3), "dtype": "float32",
                       "samples": np.asarray(samples, dtype="<f4").tobytes()}
            task = asyncio.create_task(client.call("stream:frame", payload, timeout=10))
            pending.add(task)
            task.add_done_callback(lambda t: (pending.discard(t), _count_ack(run, t)))
            run.frames_sent += 1
            seq += 1
        if pending:
            await asyncio.wait(pending, timeout=10)
        if client.connected:
            await client.call("stream:close", {"stream_id": run.stream_id}, timeout=10)
    finally:
        upcoming.cancel()
        if client.connected:
            await client.disconnect()
    return run


async def _open(client: socketio.AsyncClient, run: DeviceRun) -> None:
    opened = await client.call("stream:open", {"kind": run.kind, "sampling_rate": run.sampling_rate,
                                               "units": "mV" if run.kind == "ecg" else "au"}, timeout=10)
    if not opened.get("ok"):
        raise RuntimeError(f"stream:open refused: {opened}")
    run.stream_id, run.reopen = opened["data"]["stream_id"], False


def _count_ack(run: DeviceRun, task: asyncio.Task[Any]) -> None:
    if task.cancelled() or task.exception() is not None:
        return
    reply = task.result()
    if reply.get("ok"):
        run.frames_acked += 1
    elif reply.get("error", {}).get("code") == "unknown_stream":
        run.reopen = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--device-token", help="an existing device credential")
    p.add_argument("--email", help="the patient's login, to pair a new simulated device")
    p.add_argument("--password")
    p.add_argument("--kind", choices=("ecg", "ppg", "medicine_box"), default="ecg")
    p.add_argument("--rate", type=float, help="sampling rate (default 250 Hz ECG, 100 Hz PPG)")
    p.add_argument("--scenario", choices=SCENARIOS + BOX_SCENARIOS, default="normal",
                   help=f"medicine_box: one of {', '.join(BOX_SCENARIOS)} (default on_time)")
    p.add_argument("--drawers", type=int, default=7, help="medicine_box: how many drawers")
    p.add_argument("--hr", type=float, default=72.0, help="heart rate per minute")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--duration", type=float, help="seconds to stream (default: until stopped)")
    p.add_argument("--frame", type=float, default=1.0, help="seconds of signal per frame (0.04-2)")
    p.add_argument("--drop-after", type=int, default=20, help="network_drop: seconds online before a drop")
    p.add_argument("--drop-for", type=int, default=8, help="network_drop: seconds offline")


async def main(args: argparse.Namespace) -> None:
    credential = args.device_token
    if not credential:
        if not (args.email and args.password):
            raise SystemExit("give --device-token, or --email and --password of the patient to pair a device")
        credential = await pair_device(args.url, args.email, args.password, args.kind)
    if args.kind == "medicine_box":
        await simulate_box.main(args, credential)
        return
    run = DeviceRun(url=args.url, credential=credential, kind=args.kind,
                    sampling_rate=args.rate or (250.0 if args.kind == "ecg" else 100.0), scenario=args.scenario,
                    heart_rate=args.hr, seed=args.seed, duration_s=args.duration,
                    frame_s=min(max(args.frame, 0.04), 2.0), drop_online_s=args.drop_after,
                    drop_offline_s=args.drop_for)
    started = time.monotonic()
    log.info("streaming %s (%s, %.0f/min) to %s", run.kind, run.scenario, run.heart_rate, run.url)
    try:
        await stream(run)
    except (RuntimeError, socketio.exceptions.ConnectionError) as exc:
        raise SystemExit(f"simulate: {exc}") from None
    log.info("stream %s: sent %d frames (%d acknowledged) in %.0f s", run.stream_id, run.frames_sent,
             run.frames_acked, time.monotonic() - started)
