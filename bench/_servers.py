"""What the benchmarks start: server processes (one, or ``--workers N``), the embedded store, Redis,
Node load generators, and users."""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench._common import CpuMeter, store_commands
from server.infra.embedded_store import EmbeddedStore, free_port

NODE = Path(__file__).resolve().parent / "node"
# Benchmarks drive many connections and events from one address: lift the abuse limits.
UNLIMITED = {"HEALTHMATE_EVENT_BURST": "10000000", "HEALTHMATE_EVENT_RATE_PER_S": "10000000",
             "HEALTHMATE_USER_EVENT_BURST": "10000000", "HEALTHMATE_USER_EVENT_RATE_PER_S": "10000000",
             "HEALTHMATE_CONNECT_BURST": "10000000", "HEALTHMATE_CONNECT_RATE_PER_S": "10000000",
             "HEALTHMATE_REGISTER_MAX_PER_IP": "10000000"}
# The benches' devices send no heartbeats (a real one does every 20 s): a server would mark each of them
# disconnected a minute after it connected, and tell its patient and care team, in the middle of the figures.
NO_HEARTBEATS = {"HEALTHMATE_DEVICE_SILENCE_S": "86400"}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_ready(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60) -> float:
    """Seconds until ``url``/readyz answers 200."""
    t0 = time.perf_counter()
    while True:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return time.perf_counter() - t0
        except OSError:
            pass
        if (proc is not None and proc.poll() is not None) or time.perf_counter() - t0 > timeout:
            raise SystemExit(f"server at {url} did not start")
        time.sleep(0.02)


def spawn_server(data_dir: str, *args: str, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    """``healthmate serve`` on a free port, not waited for (``wait_ready``); the process and its URL.
    ``BENCH_SERVER_LOG=PREFIX`` keeps each server's output in ``PREFIX.PORT``."""
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHMATE_")}
    full.update(HEALTHMATE_DATA_DIR=data_dir, HEALTHMATE_PORT=str(port), HEALTHMATE_LOG_LEVEL="WARNING", **env)
    log = os.environ.get("BENCH_SERVER_LOG")
    out = open(f"{log}.{port}", "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", *args], env=full,
                            stdout=out, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def start_server(data_dir: str, *args: str, **env: str) -> tuple[subprocess.Popen[bytes], str, float]:
    """``healthmate serve`` on a free port; returns the process, its URL and its start-up time."""
    proc, url = spawn_server(data_dir, *args, **env)
    return proc, url, wait_ready(url, proc)


def stop(*procs: subprocess.Popen[Any]) -> None:
    """SIGTERM to each (together), then wait for each (killed after 30 s)."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class Store:
    url: str
    pid: int


@contextlib.contextmanager
def embedded_store(folder: Path) -> Iterator[Store]:
    """The embedded store (SecantusDB in its own process) shared by a bench's servers, supervised from
    an event loop on a thread of this process (so the bench may run loops of its own)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="embedded-store", daemon=True)
    thread.start()
    store = EmbeddedStore(folder)
    try:
        url = asyncio.run_coroutine_threadsafe(store.start(), loop).result(60)
        assert store.proc is not None
        yield Store(url, store.proc.pid)
    finally:
        asyncio.run_coroutine_threadsafe(store.stop(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@dataclass(frozen=True)
class RedisServer:
    url: str
    pid: int

    def stats(self) -> dict[str, int]:
        """Commands processed and PUBLISH calls so far (``INFO``)."""
        from redis import Redis

        with Redis.from_url(self.url) as client:
            commands = int(client.info("stats")["total_commands_processed"])
            publish = client.info("commandstats").get("cmdstat_publish", {}).get("calls", 0)
        return {"commands": commands, "publish": int(publish)}


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A throwaway Debian redis-server on a free port."""
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(exe).exists():
        raise SystemExit("redis-server is not installed (make bench installs it)")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                 "--dir", tmp], stdout=subprocess.DEVNULL)
        try:
            server = RedisServer(f"redis://127.0.0.1:{port}/0", proc.pid)
            for _ in range(100):
                try:
                    server.stats()
                    break
                except Exception:
                    time.sleep(0.05)
            yield server
        finally:
            stop(proc)


def ensure_node() -> None:
    """Node and bench/node's packages (the official socket.io client and server)."""
    if subprocess.run(["node", "--version"], capture_output=True).returncode != 0:
        raise SystemExit("node is required (the official socket.io client is the load generator)")
    if not (NODE / "node_modules" / "socket.io").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--prefix", str(NODE)], check=True)


def run_marked(cmd: list[str], on_start: Callable[[], None], on_stop: Callable[[], None],
               timeout: float) -> dict[str, Any]:
    """Run a load generator that prints ``window start`` and ``window stop`` around its measured window
    and its figures last as a JSON line; ``on_start``/``on_stop`` run at those marks (CPU and counters
    are sampled there, while every process is still running)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    last = ""
    for line in proc.stdout:
        line = line.strip()
        if line == "window start":
            on_start()
        elif line == "window stop":
            on_stop()
        elif line:
            last = line
        if time.monotonic() > deadline:
            proc.kill()
            break
    if proc.wait() != 0 or not last.startswith("{"):
        raise SystemExit(f"load generator {cmd[1]} failed ({proc.returncode}): {last[:300]}")
    return json.loads(last)


def request(url: str, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    req = urllib.request.Request(url + path, data=None if body is None else json.dumps(body).encode(),
                                 method=method, headers={"Content-Type": "application/json",
                                                         **({"Authorization": f"Bearer {token}"} if token else {})})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"null")


def post(url: str, path: str, body: Any, token: str | None = None) -> Any:
    return request(url, "POST", path, body, token)


def register(url: str, role: str, tag: str) -> dict[str, Any]:
    """A new user; returns the register reply (``user``, ``access_token``, ``refresh_token``)."""
    return post(url, "/api/auth/register", {"email": f"{role}-{tag}-{time.time_ns()}@bench.example.org",
                                            "password": "bench-passphrase-long-42", "name": f"Bench {role}",
                                            "role": role})


class Window:
    """What a measured window cost: CPU seconds per process group (``meter``), store commands the
    servers at ``urls`` (each of ``processes`` workers) sent, and Redis commands and PUBLISHes. ``open``
    and ``close`` at the window's ends (e.g. ``run_marked``'s marks)."""

    def __init__(self, meter: CpuMeter, urls: tuple[str, ...] = (), processes: int = 1,
                 redis: RedisServer | None = None) -> None:
        self.meter, self.urls, self.processes, self.redis = meter, urls, processes, redis
        self.cpu: dict[str, float] = {}
        self.seconds = 0.0
        self.store_commands: int | None = None
        self.redis_counts: dict[str, int] | None = None

    def _counts(self) -> tuple[int, dict[str, int] | None]:
        return (sum(store_commands(url, self.processes) for url in self.urls),
                self.redis.stats() if self.redis else None)

    def open(self) -> None:
        self._before = self._counts()
        self.meter.start()

    def close(self) -> None:
        self.cpu, self.seconds = self.meter.read()
        store, redis = self._counts()
        self.store_commands = store - self._before[0] if self.urls else None
        if redis is not None and self._before[1] is not None:
            self.redis_counts = {k: v - self._before[1][k] for k, v in redis.items()}


async def _recv(conn: Connection) -> Any:
    """The next object from a pipe, waited for on the event loop (a thread blocked in ``recv`` would hold
    up the loop's shutdown if the other end never answered)."""
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    while not conn.poll():
        readable.clear()
        loop.add_reader(conn.fileno(), readable.set)
        try:
            await readable.wait()
        finally:
            loop.remove_reader(conn.fileno())
    return conn.recv()


class Helpers:
    """Spawned helper processes (load generators, call peers), each running ``target(conn, *args)`` and
    driven over its end of a pipe: ``ask`` sends each its command and gathers the replies (an exception
    sent back as the reply is raised here)."""

    def __init__(self, target: Callable[..., None], args: list[tuple[Any, ...]]) -> None:
        ctx = mp.get_context("spawn")
        self.conns, self.procs = [], []
        for a in args:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=target, args=(child, *a), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid]

    async def recv(self) -> list[Any]:
        replies = await asyncio.gather(*(_recv(c) for c in self.conns))
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return list(replies)

    async def ask(self, cmds: list[tuple[Any, ...]]) -> list[Any]:
        """One command to each process (in order); their replies."""
        for conn, cmd in zip(self.conns, cmds, strict=True):
            conn.send(cmd)
        if os.environ.get("BENCH_DEBUG"):
            print(f"    [helpers] sent {[str(c)[:60] for c in cmds]}", flush=True)
        replies = await self.recv()
        if os.environ.get("BENCH_DEBUG"):
            print(f"    [helpers] replies {[str(r)[:60] for r in replies]}", flush=True)
        return replies

    async def ask_all(self, *cmd: Any) -> list[Any]:
        return await self.ask([cmd] * len(self.conns))

    async def stop(self) -> None:
        """``("stop", None)`` to each, then the processes end (killed if they do not within 5 s)."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ask_all("stop", None), 60)
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
