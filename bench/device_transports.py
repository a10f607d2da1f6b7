"""Device events over Socket.IO and over MQTT (Mosquitto + the bridge), side by side, on one server
process on the embedded store: heartbeat round trips (device -> ack, each one a store write; timed from
the device's send to its ack) and the rate of acknowledged ``stream:frame`` events (0.2 s of 250 Hz ECG
as JSON samples) from several devices at once, each keeping a window of frames in flight. The two
transports run REPEATS times over, interleaved (Socket.IO, MQTT, ...). ``cpu_us_per_frame``: CPU per
acknowledged frame of the server, the broker and the devices (this process) over the streaming window;
``store_commands_per_frame``: the server's store commands per frame.

Run: ``python -m bench.device_transports`` (needs Debian's mosquitto). Figures last, as one JSON line.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench._common import REPEATS, SMOKE, Budget, CpuMeter, emit, pct, per_op_us, rounded, server_pids, spread, start
from bench._servers import UNLIMITED, Window, post, register, request, start_server, stop
from devices.mqtt_broker import BrokerFiles
from server.infra.embedded_store import free_port
from tests.device_clients import DeviceClient, MqttDevice, SioDevice

HEARTBEATS = 10 if SMOKE else 200  # per repeat
DEVICES = 2 if SMOKE else 8
FRAMES_S = 0.5 if SMOKE else 4.0  # how long each transport streams, per repeat
WINDOW = 8  # frames in flight per device
RATE, FRAME = 250.0, 50


@contextlib.contextmanager
def mosquitto(folder: Path) -> Iterator[tuple[int, str, int]]:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port, password = free_port(), secrets.token_urlsafe(16)
    BrokerFiles(folder, "healthmate-bridge", password).write([])
    conf = folder / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {folder / 'passwd'}\n"
                    f"acl_file {folder / 'acl'}\npid_file {folder / 'mosquitto.pid'}\npersistence false\n"
                    "set_tcp_nodelay true\nuser root\n")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        yield port, f"mqtt://healthmate-bridge:{password}@127.0.0.1:{port}", proc.pid
    finally:
        stop(proc)


async def heartbeats(device: DeviceClient) -> list[float]:
    lags = []
    for n in range(HEARTBEATS):
        t0 = time.perf_counter()
        reply = await device.call("device:heartbeat", {"battery": n % 100})
        lags.append((time.perf_counter() - t0) * 1000)
        assert reply["ok"], reply
    return lags


async def stream(device: DeviceClient, deadline: float) -> int:
    opened = await device.call("stream:open", {"kind": "ecg", "sampling_rate": RATE})
    assert opened["ok"], opened
    stream_id = opened["data"]["stream_id"]
    samples = [round(math.sin(i / 8), 4) for i in range(FRAME)]
    acked, seq = 0, 0

    async def one(n: int) -> None:
        nonlocal acked
        reply = await device.call("stream:frame", {"stream_id": stream_id, "seq": n, "t0": n * FRAME / RATE * 1000,
                                                   "samples": samples}, timeout=30)
        acked += reply["ok"]

    while time.perf_counter() < deadline:
        await asyncio.gather(*(one(seq + i) for i in range(WINDOW)))
        seq += WINDOW
    await device.call("stream:close", {"stream_id": stream_id})
    return acked


async def run(url: str, mqtt_port: int, broker_pid: int, server_pid: int, patient: dict,
              budget: Budget) -> dict[str, list[Any]]:
    token, pid = patient["access_token"], patient["user"]["id"]
    figures: dict[str, list[Any]] = {}
    for r in budget.rounds(REPEATS, reserve=5):
        for transport in ("sio", "mqtt"):
            devices: list[DeviceClient] = []
            for n in range(DEVICES):
                paired = post(url, f"/api/patients/{pid}/devices",
                              {"kind": "ecg", "serial": f"B-{transport}-{r}-{n}", "model": "Bench"}, token)
                did, cred = paired["device"]["id"], paired["credential"]
                devices.append(SioDevice(url, did, cred) if transport == "sio" else MqttDevice(mqtt_port, did, cred))
            for device in devices:
                await device.connect()
            try:
                lags = await heartbeats(devices[0])
                window = Window(CpuMeter(server=server_pids(server_pid), broker=[broker_pid], devices=[os.getpid()]),
                                (url,))
                window.open()
                t0 = time.perf_counter()
                acked = sum(await asyncio.gather(*(stream(d, t0 + FRAMES_S) for d in devices)))
                window.close()
            finally:  # and unpaired: a patient keeps at most 10 devices
                for device in devices:
                    await device.close()
                    request(url, "DELETE", f"/api/patients/{pid}/devices/{device.device_id}", token=token)
            for key, value in (("heartbeat_p50_ms", pct(lags, 50)), ("heartbeat_p99_ms", pct(lags, 99)),
                               ("frames_per_s", acked / window.seconds),
                               ("cpu_us_per_frame", per_op_us(window.cpu, acked)),
                               ("store_commands_per_frame", (window.store_commands or 0) / max(acked, 1))):
                figures.setdefault(f"{transport}_{key}", []).append(value)
    return figures


def main() -> None:
    budget = start("device_transports")
    with tempfile.TemporaryDirectory() as tmp, mosquitto(Path(tmp) / "mqtt") as (port, bridge_url, broker_pid):
        proc, url, _ = start_server(str(Path(tmp) / "data"), HEALTHMATE_MQTT_URL=bridge_url,
                                    HEALTHMATE_MQTT_BROKER_DIR=str(Path(tmp) / "mqtt"), **UNLIMITED)
        try:
            time.sleep(1.0)  # the bridge connects to the broker
            patient = register(url, "patient", "transports")
            figures = asyncio.run(run(url, port, broker_pid, proc.pid, patient, budget))
        finally:
            stop(proc)
    headline = {k: v for k, v in figures.items() if "cpu_us" not in k and "store_commands" not in k}
    med = spread(headline)
    print(f"heartbeat round trip p50 (ms) Socket.IO {med['sio_heartbeat_p50_ms']}, "
          f"MQTT {med['mqtt_heartbeat_p50_ms']}; "
          f"frames/s Socket.IO {med['sio_frames_per_s']}, MQTT {med['mqtt_frames_per_s']}", flush=True)
    emit(budget, headline,
         cpu_us_per_frame={t: figures[f"{t}_cpu_us_per_frame"][-1] for t in ("sio", "mqtt")},
         store_commands_per_frame={t: rounded(figures[f"{t}_store_commands_per_frame"][-1]) for t in ("sio", "mqtt")},
         store="embedded (SecantusDB)", devices=DEVICES, frame_samples=FRAME, heartbeats_per_repeat=HEARTBEATS)


if __name__ == "__main__":
    main()
