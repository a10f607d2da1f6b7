"""Device events over Socket.IO and over MQTT (Mosquitto + the bridge), side by side, on one server
process on the embedded store: heartbeat round trips (device → ack, each one a store write) and
the rate of acknowledged ``stream:frame`` events (0.2 s of 250 Hz ECG as JSON samples) from
several devices at once, each keeping a window of frames in flight.

Run: ``python -m bench.device_transports`` (needs Debian's mosquitto). Figures last, as one JSON line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench._servers import UNLIMITED, post, register, start_server, stop
from devices.mqtt_broker import BrokerFiles
from server.infra.embedded_store import free_port
from tests.device_clients import DeviceClient, MqttDevice, SioDevice

HEARTBEATS = 400
DEVICES = 8
FRAMES_S = 6.0  # how long each transport streams
WINDOW = 8  # frames in flight per device
RATE, FRAME = 250.0, 50


@contextlib.contextmanager
def mosquitto(folder: Path) -> Iterator[tuple[int, str]]:
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
        yield port, f"mqtt://healthmate-bridge:{password}@127.0.0.1:{port}"
    finally:
        stop(proc)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)], 3)


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


async def run(url: str, mqtt_port: int, patient: dict) -> dict[str, float]:
    token, pid = patient["access_token"], patient["user"]["id"]
    figures: dict[str, float] = {}
    for transport in ("sio", "mqtt"):
        devices: list[DeviceClient] = []
        for n in range(DEVICES):
            paired = post(url, f"/api/patients/{pid}/devices",
                          {"kind": "ecg", "serial": f"B-{transport}-{n}", "model": "Bench"}, token)
            did, cred = paired["device"]["id"], paired["credential"]
            devices.append(SioDevice(url, did, cred) if transport == "sio" else MqttDevice(mqtt_port, did, cred))
        for device in devices:
            await device.connect()
        try:
            lags = await heartbeats(devices[0])
            figures[f"{transport}_heartbeat_p50_ms"] = pct(lags, 0.5)
            figures[f"{transport}_heartbeat_p99_ms"] = pct(lags, 0.99)
            t0 = time.perf_counter()
            acked = await asyncio.gather(*(stream(d, t0 + FRAMES_S) for d in devices))
            figures[f"{transport}_frames_per_s"] = round(sum(acked) / (time.perf_counter() - t0), 1)
        finally:
            for device in devices:
                await device.close()
    return figures


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, mosquitto(Path(tmp) / "mqtt") as (port, bridge_url):
        proc, url, _ = start_server(str(Path(tmp) / "data"), HEALTHMATE_MQTT_URL=bridge_url,
                                    HEALTHMATE_MQTT_BROKER_DIR=str(Path(tmp) / "mqtt"), **UNLIMITED)
        try:
            time.sleep(1.0)  # the bridge connects to the broker
            patient = register(url, "patient", "transports")
            figures = asyncio.run(run(url, port, patient))
        finally:
            stop(proc)
    print(f"heartbeat round trip (ms), Socket.IO p50/p99 {figures['sio_heartbeat_p50_ms']}/"
          f"{figures['sio_heartbeat_p99_ms']}, MQTT {figures['mqtt_heartbeat_p50_ms']}/"
          f"{figures['mqtt_heartbeat_p99_ms']}; frames/s Socket.IO {figures['sio_frames_per_s']}, "
          f"MQTT {figures['mqtt_frames_per_s']}")
    print(json.dumps({"bench": "device_transports", "store": "embedded (SecantusDB)", "devices": DEVICES,
                      "frame_samples": FRAME, **figures}))


if __name__ == "__main__":
    main()
