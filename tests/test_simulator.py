"""The simulator as a real device client: a network drop shows as a gap on the same stream,
``healthmate simulate`` pairs with a patient's login or uses a device credential, and
``healthmate serve --demo`` (``make run``) has a demo patient streaming to a demo clinician."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from devices.simulators.sensor import DeviceRun, stream
from server import demo
from server.core.config import settings_from
from server.infra.embedded_store import free_port
from tests.helpers import PASSWORD, Api, ServerProcess, connect_refused
from tests.streaming import device_socket, pair


async def test_network_drop_resumes_with_the_next_seq_and_the_gap_shows(api: Api) -> None:
    patient, clinician = await api.register("patient"), await api.register("clinician")
    await api.link(patient, clinician)
    watcher = await api.socket(clinician)
    await watcher.ok("live:subscribe", {"patient_id": patient.id})
    credential = (await pair(api, patient))["credential"]
    run = DeviceRun(url=api.base_url, credential=credential, scenario="network_drop", frame_s=0.2,
                    duration_s=5.5, drop_online_s=2, drop_offline_s=2)
    await stream(run)
    assert run.frames_sent == 28 - 10 and run.frames_acked == run.frames_sent  # 2 s offline: 10 frames never sent
    gap = (await watcher.events.wait("live:gap"))[0]
    assert gap["stream_id"] == run.stream_id and gap["after_seq"] == 9 and gap["missing_frames"] == 10
    assert abs(gap["missing_s"] - 2.0) < 0.01
    frames = watcher.events.of("live:frame")
    assert {f["stream_id"] for f in frames} == {run.stream_id}  # the same stream after the reconnect
    assert [f["seq"] for f in frames] == [*range(10), *range(20, 28)]
    status, listed = await api.request("GET", f"/api/patients/{patient.id}/streams", clinician)
    doc = listed["items"][0]
    assert doc["counters"] == {"ok": 17, "gap": 1, "missing_frames": 10} and doc["close_reason"] == "device_closed"
    for _ in range(30):
        status, body = await api.request("GET", f"/api/patients/{patient.id}/streams/{run.stream_id}/waveform",
                                         clinician)
        if status == 200 and len(body["runs"]) == 2:
            break
        await asyncio.sleep(0.1)
    first, second = body["runs"]
    assert second["seq"] == 20 and len(first["samples"]) == 10 * 50
    # Mapped to server time, the second run starts 4 s after the first: 2 s of signal, then 2 s missing.
    span = (datetime.fromisoformat(second["t"]) - datetime.fromisoformat(first["t"])).total_seconds()
    assert abs(span - 4.0) < 0.15


async def _cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "server.cli", "simulate", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def test_cli_simulate_pairs_with_a_patient_login_or_uses_a_credential(api: Api) -> None:
    patient = await api.register("patient")
    code, out = await _cli("--url", api.base_url, "--email", patient.email, "--password", PASSWORD,
                           "--kind", "ppg", "--scenario", "tachycardia", "--duration", "2", "--frame", "0.5")
    assert code == 0, out
    status, devices = await api.request("GET", f"/api/patients/{patient.id}/devices", patient)
    assert [d["kind"] for d in devices["items"]] == ["ppg"] and devices["items"][0]["serial"].startswith("SIM-PPG-")
    credential = (await pair(api, patient, "ecg"))["credential"]
    code, out = await _cli("--url", api.base_url, "--device-token", credential, "--duration", "1", "--frame", "0.5")
    assert code == 0, out
    status, listed = await api.request("GET", f"/api/patients/{patient.id}/streams", patient)
    assert status == 200
    assert sorted((s["kind"], s["sampling_rate"], s["counters"]["ok"], s["close_reason"]) for s in listed["items"]) \
        == [("ecg", 250.0, 2, "device_closed"), ("ppg", 100.0, 4, "device_closed")]
    code, out = await _cli("--url", api.base_url, "--email", patient.email, "--password", "wrong-password-123")
    assert code != 0 and "login failed" in out
    code, out = await _cli("--url", api.base_url, "--device-token", credential, "--kind", "ppg", "--duration", "1")
    assert code == 1 and "wrong_kind" in out and "Traceback" not in out
    code, out = await _cli("--url", api.base_url, "--scenario", "volcano")
    assert code == 2 and "invalid choice" in out


async def _watch_demo(server: ServerProcess) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    async with Api(server.url) as api:
        status, login = await api.request("POST", "/api/auth/login",
                                          json={"email": demo.CLINICIAN_EMAIL, "password": demo.PASSWORD})
        assert status == 200, login
        sock = await api.socket(token=login["access_token"])
        patients = await sock.ok("patients:list")
        assert [p["email"] for p in patients] == [demo.PATIENT_EMAIL]
        pid = patients[0]["id"]
        await sock.ok("live:subscribe", {"patient_id": pid})
        analyses = await sock.events.wait("live:analysis", 2, timeout=20)
        await sock.events.wait("live:frame", 10, timeout=10)
        for _ in range(100):  # both demo devices stream
            if {f["kind"] for f in sock.events.of("live:frame")} == {"ecg", "ppg"}:
                break
            await asyncio.sleep(0.1)
        return pid, sock.events.of("live:frame"), analyses


async def test_serve_demo_has_the_demo_patient_streaming_to_the_demo_clinician(tmp_path: Path) -> None:
    env = {"HEALTHMATE_DATA_DIR": str(tmp_path / "data"), "HEALTHMATE_MONGODB_URL": "", "HEALTHMATE_REDIS_URL": "",
           "HEALTHMATE_JWT_SECRET": "", "HEALTHMATE_DEMO": "true"}  # what `serve --demo` sets
    server = await ServerProcess(env, free_port()).start()
    try:
        _, frames, analyses = await _watch_demo(server)
        assert {f["kind"] for f in frames} == {"ecg", "ppg"}
        ecg = next(f for f in frames if f["kind"] == "ecg")
        assert ecg["rate"] == 125 and np.frombuffer(ecg["samples"], "<f4").size == 25  # 0.2 s frames, decimated
        assert all(a["kind"] in ("ecg", "ppg") and "hrv" in a for a in analyses)
    finally:
        assert await server.stop() == 0
    log = "".join(server.output)
    assert demo.PASSWORD in log and demo.CLINICIAN_EMAIL in log and demo.PATIENT_EMAIL in log


def test_serve_demo_flag_turns_the_demo_on(tmp_path: Path) -> None:
    parsed = argparse.Namespace(host=None, port=None, data_dir=str(tmp_path), demo=True)
    assert settings_from(parsed).demo is True
    assert settings_from(argparse.Namespace(host=None, port=None, data_dir=str(tmp_path), demo=False)).demo is False
    assert "--demo" in (Path(__file__).resolve().parent.parent / "Makefile").read_text()


async def test_demo_data_is_created_once_and_kept_across_restarts(api: Api) -> None:
    patient, clinician = await demo.ensure_accounts()
    first = {kind: await demo.device_credential(patient, kind, serial) for kind, _, serial in demo.DEVICES}
    again_patient, again_clinician = await demo.ensure_accounts()  # what the next start does
    assert (again_patient.id, again_clinician.id) == (patient.id, clinician.id)
    second = {kind: await demo.device_credential(patient, kind, serial) for kind, _, serial in demo.DEVICES}
    # The same devices, each with a new credential: the old one no longer connects.
    assert [c.split("_")[1] for c in first.values()] == [c.split("_")[1] for c in second.values()]
    assert (await connect_refused(api.base_url, {"device_token": first["ecg"]}))["error"]["code"] == "token_invalid"
    dev = await device_socket(api, second["ecg"])
    assert (await dev.ok("stream:open", {"kind": "ecg", "sampling_rate": 250}))["stream_id"]
    status, login = await api.request("POST", "/api/auth/login",
                                      json={"email": demo.CLINICIAN_EMAIL, "password": demo.PASSWORD})
    assert status == 200
    status, devices = await api.request("GET", f"/api/patients/{patient.id}/devices",
                                        headers={"Authorization": f"Bearer {login['access_token']}"})
    assert status == 200 and sorted(d["kind"] for d in devices["items"]) == ["ecg", "ppg"]


async def test_simulator_opens_a_new_stream_when_the_server_forgot_its_own(api: Api) -> None:
    patient = await api.register("patient")
    credential = (await pair(api, patient))["credential"]
    run = DeviceRun(url=api.base_url, credential=credential, frame_s=0.2, duration_s=3.0)
    task = asyncio.create_task(stream(run))
    while run.frames_acked < 3:
        await asyncio.sleep(0.05)
    first = run.stream_id
    # The same device opens its channel again elsewhere (as after a restart): the first stream ends.
    other = await device_socket(api, credential)
    await other.ok("stream:open", {"kind": "ecg", "sampling_rate": 250})
    await other.close()
    await task
    assert run.stream_id != first
    status, listed = await api.request("GET", f"/api/patients/{patient.id}/streams", patient)
    assert status == 200
    by_id = {s["id"]: s for s in listed["items"]}
    assert by_id[first]["close_reason"] == "replaced"
    assert by_id[run.stream_id]["close_reason"] == "device_closed" and by_id[run.stream_id]["counters"]["ok"] >= 3
