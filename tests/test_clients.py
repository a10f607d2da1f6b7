"""The clients a mobile team starts from, run for real against a server process: the client guide's two
worked examples, extracted from docs/client-guide.md (the JavaScript caregiver app with the official
socket.io client, the Python sensor with python-socketio), and the generated TypeScript client
(clients/typescript, built with tsc) doing what a caregiver app does: log in, connect, subscribe to the
patient, hear a frame and an analysis, ack the alert. The sensor example streams; both apps watch; the patient's
crisis reading raises the alert they both acknowledge (one wins, the other is told)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from server.infra.embedded_store import EmbeddedStore
from tests.device_clients import pair_device
from tests.helpers import PASSWORD, Api, connect, process_env, server_processes

ROOT = Path(__file__).resolve().parent.parent
GUIDE = (ROOT / "docs" / "client-guide.md").read_text()
PLACEHOLDER_URL = "https://healthmate.example"
SOCKET_IO = (ROOT / "node_modules" / "socket.io-client" / "build" / "esm" / "index.js").as_uri()


def example(heading: str, language: str) -> str:
    """The first ``language`` code block after ``heading`` in the guide."""
    found = re.search(rf"^## {re.escape(heading)}.*?```{language}\n(.*?)```", GUIDE, re.S | re.M)
    assert found, f"no {language} example under {heading}"
    return found.group(1)


JS_PRELUDE = """
const [URL_, email, password] = process.argv.slice(2);
const installationId = "guide-js-app";
const post = async (path, body) => (await fetch(URL_ + path, {
  method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)})).json();
const seen = {frame: false, analysis: false, acked: null, banner: null};
const mark = (what, value = true) => {
  if (what === "frame" && !seen.frame) console.log(JSON.stringify({frame: true}));
  seen[what] = value;
  if (seen.frame && seen.analysis && seen.acked !== null && seen.banner) {
    console.log(JSON.stringify(seen));
    process.exit(0);
  }
};
const chart = {push: (streamId, seq, samples) => samples.length > 0 && mark("frame")};
const showNoRate = (reason) => mark("analysis", reason);
const showHeartRate = (hr) => mark("analysis", hr);
const showAlert = async (alert, ack) => { const reply = await ack(); mark("acked", reply.ok); };
const banner = (message) => mark("banner", message);
"""

PY_PRELUDE = """
import sys, time
import numpy as np
from devices.signal_scenarios import scenario_signal

class Enough(Exception):
    pass

_signal, _frames, _buffer = scenario_signal("ecg", "normal", 250.0), [0], [np.zeros(0)]

def read_adc(n):
    _frames[0] += 1
    if _frames[0] > int(sys.argv[3]):
        raise Enough
    time.sleep(1.0)  # the time the ADC takes to give a second of samples
    while _buffer[0].size < n:
        _buffer[0] = np.concatenate((_buffer[0], next(_signal)))
    out, _buffer[0] = _buffer[0][:n], _buffer[0][n:]
    return [float(v) for v in out]
"""

PY_POSTLUDE = """
try:
    asyncio.run(main(sys.argv[2]))
except Enough:
    print("streamed")
"""


def _js_guide(tmp: Path) -> Path:
    code = example("7. Worked example", "js").replace('"socket.io-client"', json.dumps(SOCKET_IO))
    imports, _, body = code.partition("\n\n")
    path = tmp / "guide_app.mjs"
    path.write_text(imports + "\n" + JS_PRELUDE + "\n" + body.replace(f'"{PLACEHOLDER_URL}"', "URL_"))
    return path


def _py_guide(tmp: Path) -> Path:
    code = example("8. Worked example", "python").replace(f'"{PLACEHOLDER_URL}"', "sys.argv[1]")
    path = tmp / "guide_sensor.py"
    path.write_text(PY_PRELUDE + code + PY_POSTLUDE)
    return path


async def _lines(proc: asyncio.subprocess.Process, name: str, frame_seen: asyncio.Event, out: list[Any]) -> None:
    assert proc.stdout is not None
    async for raw in proc.stdout:
        line = raw.decode().strip()
        try:
            msg = json.loads(line)
        except ValueError:
            out.append(line)
            continue
        if msg == {"frame": True}:
            frame_seen.set()
        else:
            out.append(msg)


@pytest.fixture(scope="module")
def built_client() -> Path:
    node = shutil.which("node")
    tsc = ROOT / "node_modules" / ".bin" / "tsc"
    if node is None or not tsc.exists():
        pytest.fail("node and the npm packages are needed: `make node_modules/.package-lock.json`")
    generated = subprocess.run([node, str(ROOT / "clients/typescript/generate.mjs"), "--check"], cwd=ROOT,
                               capture_output=True, text=True, timeout=120)
    assert generated.returncode == 0, generated.stderr
    done = subprocess.run([str(tsc), "-p", str(ROOT / "clients/typescript")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return ROOT / "clients" / "typescript" / "dist" / "index.js"


async def test_guide_examples_and_typescript_client_against_a_server(
        store: EmbeddedStore, tmp_path: Path, built_client: Path) -> None:
    env = process_env(store.url, tmp_path / "data", analysis_workers=1)
    async with server_processes(env) as (server,):
        api = Api(server.url)
        async with api:
            patient, carer_js, carer_ts = (await api.register("patient"), await api.register("caregiver"),
                                           await api.register("caregiver"))
            await api.link(patient, carer_js)
            await api.link(patient, carer_ts)
            _, credential = await pair_device(api, patient, "ecg")
            sensor = await asyncio.create_subprocess_exec(
                sys.executable, str(_py_guide(tmp_path)), server.url, credential, "60", cwd=ROOT,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            apps = {}
            scripts = (("guide", _js_guide(tmp_path)), ("typescript", ROOT / "tests/node/ts_client_scenario.mjs"))
            for name, script in scripts:
                user = carer_js if name == "guide" else carer_ts
                apps[name] = await asyncio.create_subprocess_exec(
                    "node", str(script), server.url, user.email, PASSWORD, cwd=ROOT,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            try:
                outputs: dict[str, list[Any]] = {name: [] for name in apps}
                frames = {name: asyncio.Event() for name in apps}
                readers = [asyncio.create_task(_lines(p, n, frames[n], outputs[n])) for n, p in apps.items()]
                await asyncio.wait_for(asyncio.gather(*(f.wait() for f in frames.values())), 60)
                patient_socket = await connect(server.url, patient.access_token)
                reading = await patient_socket.call("bp:add", {"systolic": 190, "diastolic": 125,
                                                               "measured_at": datetime.now(UTC).isoformat()})
                await patient_socket.close()
                assert reading["ok"] is True, reading
                codes = await asyncio.wait_for(asyncio.gather(*(p.wait() for p in apps.values())), 90)
                await asyncio.gather(*readers)
            finally:
                for proc in (*apps.values(), sensor):
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()
        assert codes == [0, 0], outputs
        guide, typescript = outputs["guide"][-1], outputs["typescript"][-1]
        assert guide["frame"] and guide["analysis"] is not None and guide["acked"] is True, outputs
        assert "is handling it" in guide["banner"]
        assert typescript["frame"] and typescript["analysis"] and "is handling it" in typescript["acknowledged"]
        # both acknowledged: exactly one of them won
        assert typescript["acked"] in (True, False), outputs
