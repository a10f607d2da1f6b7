"""Live waveform streams: how many 250 Hz ECG devices one server analyses in real time, on one core.

Setup. One ``healthmate serve`` subprocess on the embedded store (SecantusDB) with
``analysis_workers=1``: all streaming analysis runs in that one worker process, i.e. on at most one
core. Patients, one clinician, their links and ECG devices are set up through REST (registration,
link code, pairing: the device credentials). Each patient has PER_PATIENT devices (registration
hashes a password with argon2id, ~0.4 s of this machine's CPU, so one patient per stream would spend
minutes on setup) and the clinician one watcher socket per patient (``live:subscribe``, 125 Hz
display), which receives each of its streams: every frame still goes to exactly one watcher.

Load. Load-generator processes (LOADGENS, asyncio, ``bench._sio``: the real Socket.IO protocol over
aiohttp websockets, at a fraction of python-socketio's CPU per message) drive the devices: each
opens a stream and sends one binary float32 frame of 250 samples per second (random phase) with
``t0`` = its send time minus the frame's duration (ms, the machine's clock: the first sample's
time). Watchers time every ``live:frame`` (device send -> watcher receive) and collect every
``live:analysis``'s ``lag_ms`` (taken by the server when the analysis comes back from the worker:
now minus the arrival of the newest samples it covers). A probe
socket times ``sys:ping`` acks every 20 ms: the event loop must not stall.

Search. A staircase of N (streams stay connected, more are added per step, an 8 s look each, one
more look if it fails: the machine is shared) until the newest analysis lags >= 1.5 s in some
second; then 60 s at the largest good N - on a fresh server process (same store and accounts) with
fresh connections if a step failed, since a step that fell behind leaves backlogs. The naive
baseline (``nk.ecg_process`` on the last 10 s, per stream and second) is timed in-process on one core
in the same run: naive streams per core = 1 / (seconds per analysis).

CPU accounting. The load generators, the server's event loop, the store and the analysis worker all
share the machine's 2 cores (and whatever else runs on it: ``load_avg_1m``). Each window reports the
cores each took (``cpu_share_cores``, from /proc). ``streams_per_core`` is the N measured end to end;
``analysis_capacity_per_core`` = N / the worker's cores, what one whole core of analysis carries
(including its IPC); ``server_streams_per_core`` = N / (event loop + worker + store cores), what the
whole server needs per stream. When the machine is loaded, N is bounded by the share of CPU the
server's event loop gets, not by the analysis: the CPU figures show it.

Memory per stream: the growth of server + analysis worker RSS between the first and the largest
passing step, per added stream (sockets, stream state, analyser, watcher queue); the store's own
growth is storage and not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import random
import signal
import statistics
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from bench import _servers as servers
from bench._sio import SioClient

FS = 250
FRAME = 250
FRAME_MS = 1000.0 * FRAME / FS
LAG_LIMIT_MS = 1500.0
# Overridable for a quick try: BENCH_STREAMS_STEPS="20,40" BENCH_STREAMS_CONFIRM_S=10 python -m bench.streams
CONFIRM_S = float(os.environ.get("BENCH_STREAMS_CONFIRM_S", 60))
PROBE_S = 8.0
STEPS = tuple(int(n) for n in os.environ.get("BENCH_STREAMS_STEPS", "100,300,500,650,800").split(","))
LOADGENS = 2
# Devices per patient. Registration hashes a password (argon2id, ~0.4 s of this machine's CPU under
# load), so one patient per stream would spend minutes on setup: each patient has PER_PATIENT ECG
# devices and one watcher, which receives each of those streams - every frame still goes to exactly
# one watcher, as with one watcher per single-stream patient (there are N / PER_PATIENT watcher sockets).
PER_PATIENT = 10
PASSWORD = "bench-streams-passphrase-42"
BUDGET_S = 290.0  # the whole bench, start to JSON line


# ------------------------------------------------------------------------------------------------ helpers
def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


# ------------------------------------------------------------------------------------------------ naive
def naive_and_streaming_cost() -> dict[str, float]:
    """Seconds per naive analysis (``nk.ecg_process`` on 10 s at 250 Hz) and per stream-second of the
    streaming pipeline (``StreamAnalyser`` + ``EventDetector``), both in this process, one core."""
    import neurokit2 as nk

    from ml.rhythm_events import EventDetector
    from ml.signal_stream import StreamAnalyser

    signal_ = nk.ecg_simulate(duration=70, sampling_rate=FS, heart_rate=72, noise=0.05, random_state=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nk.ecg_process(signal_[:10 * FS], sampling_rate=FS)  # warm-up (imports, caches)
        runs = []
        for i in range(15):
            window = signal_[i * FS:(i + 10) * FS]
            t = time.process_time()
            nk.ecg_process(window, sampling_rate=FS)
            runs.append(time.process_time() - t)
    streams = 40
    pairs = [(StreamAnalyser("ecg", FS), EventDetector()) for _ in range(streams)]
    frames = signal_.astype(np.float32).astype(np.float64)
    for second in range(70):
        if second == 10:
            t = time.process_time()
        for analyser, detector in pairs:
            for analysis in analyser.push(frames[second * FS:(second + 1) * FS]):
                detector.update(analysis)
    per_stream_s = (time.process_time() - t) / (60 * streams)
    return {"naive_s": statistics.median(runs), "stream_s": per_stream_s}


# ------------------------------------------------------------------------------------------------ server
def start_server(data_dir: str) -> tuple[subprocess.Popen[bytes], str]:
    """``healthmate serve`` on ``data_dir`` (a fresh port each time), one analysis worker, abuse limits
    lifted (every device and watcher connects from 127.0.0.1); once ready."""
    proc, url, _ = servers.start_server(data_dir, HEALTHMATE_ANALYSIS_WORKERS="1",
                                        HEALTHMATE_ACCESS_TOKEN_TTL_S="3600", **servers.UNLIMITED)
    return proc, url


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server and make sure its store and worker are gone too: a server that closes hundreds
    of streams on an overloaded store can outlast ``servers.stop``'s wait and be killed, which would
    leave its store running on the data dir (the restart needs it) after the bench."""
    kids = servers.descendants(proc.pid)
    servers.stop(proc)
    deadline = time.monotonic() + 20
    while kids and time.monotonic() < deadline:
        kids = [p for p in kids if Path(f"/proc/{p}").exists() and "Z" not in _state(p)]
        time.sleep(0.2)
    for pid in kids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


class Rest:
    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        self.url, self.http = url, http

    async def call(self, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.request(method, self.url + path, headers=headers, **kw) as resp:
            body = await resp.json()
            if resp.status >= 300:
                raise RuntimeError(f"{method} {path}: {resp.status} {body}")
            return body

    async def register(self, role: str, n: int) -> dict[str, Any]:
        return await self.call("POST", "/api/auth/register", json={
            "email": f"bench-{role}-{n}-{os.getpid()}@example.org", "password": PASSWORD,
            "name": f"Bench {role} {n}", "role": role})

    async def patient_with_devices(self, n: int, clinician_token: str, devices: int) -> tuple[str, list[str]]:
        """A patient linked to the clinician, with paired ECG devices: (patient id, device credentials)."""
        patient = await self.register("patient", n)
        token, pid = patient["access_token"], patient["user"]["id"]
        code = await self.call("POST", "/api/links/codes", token)
        await self.call("POST", "/api/links/redeem", clinician_token, json={"code": code["code"]})
        credentials = []
        for d in range(devices):
            paired = await self.call("POST", f"/api/patients/{pid}/devices", token,
                                     json={"kind": "ecg", "serial": f"BENCH-{n:04d}-{d:02d}", "model": "bench"})
            credentials.append(paired["credential"])
        return pid, credentials


# ------------------------------------------------------------------------------------------------ load generator
def loadgen_main(conn: Any, clinician_token: str, seed: int) -> None:
    """A load-generator process: devices + watchers on one asyncio loop, driven over ``conn``."""
    asyncio.run(_loadgen(conn, clinician_token, seed))


class _Patient:
    """One patient's devices (each one stream) and the clinician's watcher socket of that patient."""

    def __init__(self, patient_id: str, credentials: list[str]) -> None:
        self.patient_id, self.credentials = patient_id, credentials
        self.watcher: SioClient | None = None
        self.devices: list[tuple[SioClient, str]] = []  # (socket, stream id)
        self.tasks: list[asyncio.Task[None]] = []


async def _loadgen(conn: Any, clinician_token: str, seed: int) -> None:
    import neurokit2 as nk

    loop = asyncio.get_running_loop()
    signal_ = nk.ecg_simulate(duration=60, sampling_rate=FS, heart_rate=72, noise=0.05, random_state=seed)
    frames = [signal_[i:i + FRAME].astype("<f4").tobytes() for i in range(0, signal_.size, FRAME)]
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    patients: list[_Patient] = []
    stats: dict[str, Any] = {}
    connecting = asyncio.Semaphore(8)

    def reset() -> None:
        stats.update(frame_ms=[], lag=[], analyses=0, sent=0, acked=0, refused=0, lost_devices=0)

    reset()

    def acked(reply: Any) -> None:
        if isinstance(reply, dict) and reply.get("ok"):
            stats["acked"] += 1
        else:
            stats["refused"] += 1

    async def run_device(device: SioClient, stream_id: str) -> None:
        """One frame of 250 samples per second, at a random phase; t0 = send time (ms, shared clock)."""
        start = loop.time() + random.random()
        offset = random.randrange(len(frames))
        k = 0
        while device.ws is not None and not device.ws.closed:
            await asyncio.sleep(max(0.0, start + k - loop.time()))
            # t0: the device clock (here the machine's) at the frame's first sample, one frame before it leaves.
            payload = {"stream_id": stream_id, "seq": k, "t0": round(time.time() * 1000 - FRAME_MS, 3),
                       "dtype": "float32", "samples": frames[(offset + k) % len(frames)]}
            try:
                await device.emit("stream:frame", payload, callback=acked)
            except Exception:
                break
            stats["sent"] += 1
            k += 1
        stats["lost_devices"] = stats.get("lost_devices", 0) + 1

    def on_frame(data: dict[str, Any]) -> None:
        stats["frame_ms"].append(time.time() * 1000 - (data["t0"] + FRAME_MS))  # receive - send

    def on_analysis(data: dict[str, Any]) -> None:
        stats["analyses"] += 1
        stats["lag"].append((time.time(), data.get("lag_ms", 0.0)))

    async def add(p: _Patient, url: str) -> None:
        p.watcher = SioClient(http)
        p.watcher.on("live:frame", on_frame)
        p.watcher.on("live:analysis", on_analysis)
        await p.watcher.connect(url, {"token": clinician_token})
        reply = await p.watcher.call("live:subscribe", {"patient_id": p.patient_id, "display_rate": 125})
        assert reply.get("ok"), reply
        for credential in p.credentials:
            device = SioClient(http)
            await device.connect(url, {"device_token": credential})
            reply = await device.call("stream:open", {"kind": "ecg", "sampling_rate": FS, "units": "mV"})
            assert reply.get("ok"), reply
            p.devices.append((device, reply["data"]["stream_id"]))
            p.tasks.append(asyncio.create_task(run_device(device, reply["data"]["stream_id"])))

    async def remove(p: _Patient, close: bool = True) -> None:
        for task in p.tasks:
            task.cancel()

        async def one(device: SioClient, stream_id: str) -> None:
            if close:
                with contextlib.suppress(Exception):
                    await device.call("stream:close", {"stream_id": stream_id}, timeout=5)
            await device.disconnect()

        await asyncio.gather(*(one(d, sid) for d, sid in p.devices), return_exceptions=True)
        if p.watcher is not None:
            await p.watcher.disconnect()

    def streams() -> int:
        """Streams whose device is still sending."""
        return sum(1 for p in patients for t in p.tasks if not t.done())

    while True:
        cmd, arg = await loop.run_in_executor(None, conn.recv)
        if cmd == "add":
            url, batch = arg
            new = [_Patient(pid, creds) for pid, creds in batch]

            async def one(p: _Patient, url: str) -> str | None:
                async with connecting:
                    try:
                        await add(p, url)
                        return None
                    except Exception as exc:
                        return repr(exc)[:200]

            errors = [e for e in await asyncio.gather(*(one(p, url) for p in new)) if e]
            patients.extend(new)
            conn.send(("added", streams(), errors[:3]))
        elif cmd == "remove":  # whole patients, from the last added
            gone = []
            while patients and sum(len(p.devices) for p in gone) < arg:
                gone.append(patients.pop())
            await asyncio.gather(*(remove(p) for p in gone), return_exceptions=True)
            conn.send(("removed", streams(), []))
        elif cmd == "drop":  # everything, at once, without closing the streams (the server goes too)
            await asyncio.gather(*(remove(p, close=False) for p in patients), return_exceptions=True)
            patients.clear()
            conn.send(("dropped", 0, []))
        elif cmd == "reset":
            reset()
            conn.send(("reset", streams(), []))
        elif cmd == "collect":
            conn.send(("stats", streams(), dict(stats)))
            reset()
        elif cmd == "stop":
            await asyncio.gather(*(remove(p) for p in patients), return_exceptions=True)
            await http.close()
            conn.send(("stopped", 0, []))
            return


class LoadGens:
    """The load-generator processes, driven together."""

    def __init__(self, clinician_token: str, count: int) -> None:
        ctx = mp.get_context("spawn")
        self.conns, self.procs = [], []
        for i in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=loadgen_main, args=(child, clinician_token, i + 1), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    async def _ask(self, cmds: list[tuple[str, Any]]) -> list[tuple[str, int, Any]]:
        loop = asyncio.get_running_loop()
        for conn, cmd in zip(self.conns, cmds, strict=True):
            conn.send(cmd)
        return list(await asyncio.gather(*(loop.run_in_executor(None, c.recv) for c in self.conns)))

    async def add(self, url: str, patients: list[tuple[str, list[str]]]) -> tuple[int, list[str]]:
        """Connect these patients' watchers and devices (spread over the generators); total streams."""
        shares = [patients[i::len(self.conns)] for i in range(len(self.conns))]
        replies = await self._ask([("add", (url, s)) for s in shares])
        return sum(r[1] for r in replies), [e for r in replies for e in r[2]]

    async def remove(self, count: int) -> int:
        """Disconnect about ``count`` streams (whole patients); total streams left."""
        per = [count // len(self.conns) + (1 if i < count % len(self.conns) else 0) for i in range(len(self.conns))]
        return sum(r[1] for r in await self._ask([("remove", k) for k in per]))

    async def drop(self) -> None:
        await self._ask([("drop", None)] * len(self.conns))

    async def reset(self) -> None:
        await self._ask([("reset", None)] * len(self.conns))

    async def collect(self) -> dict[str, Any]:
        merged: dict[str, Any] = {"frame_ms": [], "lag": [], "analyses": 0, "sent": 0, "acked": 0, "refused": 0,
                                  "lost_devices": 0}
        for _, _, stats in await self._ask([("collect", None)] * len(self.conns)):
            for key, value in stats.items():
                merged[key] = merged[key] + value
        return merged

    async def stop(self) -> None:
        try:
            await asyncio.wait_for(self._ask([("stop", None)] * len(self.conns)), 60)
        except TimeoutError:
            pass
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()


# ------------------------------------------------------------------------------------------------ probe
class Probe:
    """A clinician socket timing the cheapest acknowledged event (``sys:ping``: no store access) every
    20 ms: if analysis or fan-out stalled the event loop, these round trips would show it."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.rtt_ms: list[float] = []
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.http = aiohttp.ClientSession()
        self.client = SioClient(self.http)
        await self.client.connect(self.url, {"token": self.token})
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            t = time.perf_counter()
            await self.client.call("sys:ping", {"t": time.time() * 1000}, timeout=30)
            self.rtt_ms.append((time.perf_counter() - t) * 1000)
            await asyncio.sleep(0.02)

    def take(self) -> list[float]:
        out, self.rtt_ms = self.rtt_ms, []
        return out

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
        await self.client.disconnect()
        await self.http.close()


# ------------------------------------------------------------------------------------------------ measurement
class Cpu:
    """CPU seconds of the server, its analysis worker (spawned with the first stream), the store and the
    load generators; the server's children are looked up at every sample."""

    def __init__(self, server_pid: int, loadgen_pids: list[int]) -> None:
        self.server_pid = server_pid
        self.loadgen_pids = [*loadgen_pids, os.getpid()]

    def groups(self) -> dict[str, list[int]]:
        kids = servers.descendants(self.server_pid)
        workers = [p for p in kids if "spawn_main" in servers.cmdline(p)]
        return {"server_loop": [self.server_pid], "analysis_worker": workers,
                "store": [p for p in kids if "multiprocessing" not in servers.cmdline(p)],
                "load_generators": self.loadgen_pids}

    def sample(self) -> dict[str, float]:
        return {k: sum(servers.cpu_s(p) for p in pids) for k, pids in self.groups().items()}

    def rss_kb(self) -> int:
        """Resident memory of the server process and its analysis worker (not the store)."""
        groups = self.groups()
        return round(sum(servers.rss_mb(p) for p in groups["server_loop"] + groups["analysis_worker"]) * 1024)


def summarise(stats: dict[str, Any], seconds: float, streams: int, probe_ms: list[float]) -> dict[str, Any]:
    lags = stats["lag"]
    # Newest-analysis lag per wall-clock second: the worst one in each second (must stay < 1.5 s).
    per_second: dict[int, float] = {}
    for at, lag in lags:
        per_second[int(at)] = max(per_second.get(int(at), 0.0), lag)
    worst = max(per_second.values()) if per_second else None
    expected = streams * seconds
    return {"streams": streams, "seconds": round(seconds, 1),
            "analysis_lag_max_ms": None if worst is None else round(worst, 1),
            "analysis_lag_p50_ms": None if not lags else round(percentile([x for _, x in lags], 50), 1),
            "analyses_ratio": round(stats["analyses"] / expected, 3) if expected else None,
            "frames_per_s": round(stats["acked"] / seconds, 1), "refused": stats["refused"],
            "watcher_p50_ms": percentile(stats["frame_ms"], 50), "watcher_p99_ms": percentile(stats["frame_ms"], 99),
            "watcher_frames_ratio": round(len(stats["frame_ms"]) / max(stats["sent"], 1), 3),
            "probe_p50_ms": percentile(probe_ms, 50), "probe_p99_ms": percentile(probe_ms, 99)}


def keeps_up(m: dict[str, Any]) -> bool:
    """Real time: the newest analysis lags < 1.5 s in every second (``lag_ms`` is taken by the server
    when the analysis comes back from the worker, from the arrival of the newest samples it covers),
    and analyses keep flowing. Not "every analysis reached its watcher": each watcher here watches
    PER_PATIENT streams, and the server's per-watcher queue (bounded, dropping oldest, frames and
    analyses alike) drops when a watcher's socket backs up - by design, and reported as
    ``analyses_ratio``."""
    return (m["analysis_lag_max_ms"] is not None and m["analysis_lag_max_ms"] < LAG_LIMIT_MS
            and (m["analyses_ratio"] or 0) >= 0.5)


async def measure(gens: LoadGens, probe: Probe, cpu: Cpu, streams: int, seconds: float,
                  settle: float) -> dict[str, Any]:
    await asyncio.sleep(settle)
    await gens.reset()
    probe.take()
    t = time.monotonic()
    before = cpu.sample()
    await asyncio.sleep(seconds)
    after = cpu.sample()
    stats = await gens.collect()
    m = summarise(stats, time.monotonic() - t, streams, probe.take())
    m["cpu_cores"] = {k: round((after[k] - before[k]) / m["seconds"], 2) for k in after}
    m["rss_kb"] = cpu.rss_kb()
    m["load_avg_1m"] = round(os.getloadavg()[0], 1)
    return m


def fmt(m: dict[str, Any]) -> str:
    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.0f}" if isinstance(v, float) else str(v)
    return (f"N={m['streams']:4d}: analysis lag max {f(m['analysis_lag_max_ms'])} ms (p50 "
            f"{f(m['analysis_lag_p50_ms'])}), analyses {m['analyses_ratio']}, {f(m['frames_per_s'])} frames/s, "
            f"watcher p50/p99 {f(m['watcher_p50_ms'])}/{f(m['watcher_p99_ms'])} ms, probe ack p50/p99 "
            f"{f(m['probe_p50_ms'])}/{f(m['probe_p99_ms'])} ms; CPU (cores) {m['cpu_cores']}, machine load "
            f"{m['load_avg_1m']}")


async def run(data_dir: str, started: float) -> dict[str, Any]:
    server, url = start_server(data_dir)
    try:
        return await _run(data_dir, server, url, started)
    finally:
        stop_server(server)


async def _run(data_dir: str, server: subprocess.Popen[bytes], url: str, started: float) -> dict[str, Any]:
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32))
    rest = Rest(url, http)
    clinician = await rest.register("clinician", 0)
    token = clinician["access_token"]
    n_patients = -(-max(STEPS) // PER_PATIENT)
    sem = asyncio.Semaphore(16)

    async def setup(n: int) -> tuple[str, list[str]]:
        async with sem:
            return await rest.patient_with_devices(n, token, PER_PATIENT)

    t = time.monotonic()
    patients = list(await asyncio.gather(*(setup(n) for n in range(n_patients))))
    await http.close()
    print(f"set up {n_patients} patients linked to a clinician, {n_patients * PER_PATIENT} paired devices, through "
          f"REST in {time.monotonic() - t:.0f} s", flush=True)

    gens = LoadGens(token, LOADGENS)
    probe = Probe(url, token)
    steps: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    connected = 0
    confirm: dict[str, Any] | None = None
    mem_kb = None
    try:
        await probe.start()
        cpu = Cpu(server.pid, [p.pid for p in gens.procs if p.pid is not None])
        base_rss, base_streams = cpu.rss_kb(), 0
        for n in STEPS:
            # Leave time for a restart, the confirmation and the teardown.
            if time.monotonic() - started > BUDGET_S - CONFIRM_S - 90:
                print(f"stopping the search at N={connected}: time budget", flush=True)
                break
            connected, errors = await gens.add(url, patients[connected // PER_PATIENT:n // PER_PATIENT])
            if errors:
                print(f"  connect errors: {errors}", flush=True)
            m = await measure(gens, probe, cpu, connected, PROBE_S, settle=5.0)
            print("probe   " + fmt(m), flush=True)
            if not keeps_up(m):  # the machine is shared: one more look before calling it
                m = await measure(gens, probe, cpu, connected, PROBE_S, settle=1.0)
                print("again   " + fmt(m), flush=True)
            steps.append(m)
            if not keeps_up(m):
                break
            best = m
        target = best["streams"] if best else STEPS[0]
        if connected != target:
            # A step that fell behind leaves backlogs and may have cost connections (ping timeouts):
            # confirm on a fresh server process (same store, same accounts) with fresh connections.
            await gens.drop()
            await probe.stop()
            stop_server(server)
            server, url = start_server(data_dir)
            probe = Probe(url, token)
            await probe.start()
            cpu = Cpu(server.pid, [p.pid for p in gens.procs if p.pid is not None])
            first, errors = await gens.add(url, patients[:1])  # warm the process up before the memory baseline
            await asyncio.sleep(2)
            base_rss, base_streams = cpu.rss_kb(), first
            connected, more = await gens.add(url, patients[1:target // PER_PATIENT])
            errors += more
            print(f"restarted the server for the confirmation at N={connected}" +
                  (f"; connect errors: {errors}" if errors else ""), flush=True)
        confirm = await measure(gens, probe, cpu, connected, CONFIRM_S, settle=8.0)
        print("confirm " + fmt(confirm), flush=True)
        passing = [m for m in steps if keeps_up(m) and m["streams"] < connected]
        if not keeps_up(confirm) and passing and time.monotonic() - started < BUDGET_S - CONFIRM_S + 20:
            # Time for one more: the next smaller step that passed its probe.
            connected = await gens.remove(connected - passing[-1]["streams"])
            confirm = await measure(gens, probe, cpu, connected, CONFIRM_S, settle=8.0)
            print("confirm " + fmt(confirm), flush=True)
        # Marginal memory per stream: RSS growth between the first and the largest passing step of the
        # search (what another stream costs once the process is warm); without two such steps, the growth
        # from the baseline (idle, or one patient's streams after a restart) to the confirmation.
        passing = [m for m in steps if keeps_up(m)]
        if len(passing) >= 2 and passing[-1]["streams"] > passing[0]["streams"]:
            mem_kb = (passing[-1]["rss_kb"] - passing[0]["rss_kb"]) / (passing[-1]["streams"] - passing[0]["streams"])
        else:
            mem_kb = (confirm["rss_kb"] - base_rss) / max(connected - base_streams, 1)
    finally:
        await probe.stop()
        await gens.stop()
        stop_server(server)
    return {"steps": steps, "confirm": confirm, "mem_per_stream_kb": mem_kb}


def _interrupt(*_: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: let the cleanup stop the server and its store
    raise KeyboardInterrupt


def main() -> None:
    started = time.monotonic()
    cost = naive_and_streaming_cost()
    naive_per_core = 1.0 / cost["naive_s"]
    print(f"naive: nk.ecg_process on 10 s at 250 Hz takes {cost['naive_s'] * 1000:.1f} ms -> {naive_per_core:.1f} "
          f"streams per core; streaming pipeline in-process: {cost['stream_s'] * 1e6:.0f} us per stream-second",
          flush=True)
    signal.signal(signal.SIGTERM, _interrupt)  # so that a timeout still stops the server and its store
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(run(tmp, started))
    confirm = result["confirm"] or {}
    ok = bool(confirm) and keeps_up(confirm)
    streams = confirm.get("streams", 0) if ok else 0
    cpu = confirm.get("cpu_cores", {})
    worker_cpu = cpu.get("analysis_worker")
    capacity = server_capacity = None
    if worker_cpu and confirm.get("streams"):
        capacity = round(confirm["streams"] / worker_cpu)  # streams one whole core of analysis would carry
        server_cpu = worker_cpu + cpu.get("server_loop", 0.0) + cpu.get("store", 0.0)
        server_capacity = round(confirm["streams"] / server_cpu)
    figures = {
        "bench": "streams", "store": "embedded SecantusDB",
        "streams_per_core": streams,
        "naive_streams_per_core": round(naive_per_core, 1),
        "watcher_latency_p50_ms": None if not ok else round(confirm["watcher_p50_ms"], 1),
        "watcher_latency_p99_ms": None if not ok else round(confirm["watcher_p99_ms"], 1),
        "frames_per_s": confirm.get("frames_per_s"),
        "mem_per_stream_kb": None if result["mem_per_stream_kb"] is None else round(result["mem_per_stream_kb"], 1),
        "x_naive": round(streams / naive_per_core, 1),
        "confirmed_60s": ok,
        "analysis_lag_max_ms": confirm.get("analysis_lag_max_ms"),
        "probe_ack_p50_ms": None if confirm.get("probe_p50_ms") is None else round(confirm["probe_p50_ms"], 2),
        "probe_ack_p99_ms": None if confirm.get("probe_p99_ms") is None else round(confirm["probe_p99_ms"], 2),
        "cpu_share_cores": cpu,
        "analysis_capacity_per_core": capacity,
        "server_streams_per_core": server_capacity,
        "streaming_inprocess_us_per_stream_s": round(cost["stream_s"] * 1e6, 1),
        "load_avg_1m": confirm.get("load_avg_1m"),
        "streams_per_patient_watcher": PER_PATIENT,
        "search": [{k: m[k] for k in ("streams", "analysis_lag_max_ms", "analyses_ratio", "watcher_p99_ms",
                                      "load_avg_1m")} for m in result["steps"]],
        "seconds": round(time.monotonic() - started, 1),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
