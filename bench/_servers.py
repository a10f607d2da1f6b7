"""What the benchmarks start: server processes (one, or ``--workers N``), Redis, and users."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from server.infra.embedded_store import free_port

# Benchmarks drive many connections and events from one address: lift the abuse limits.
UNLIMITED = {"HEALTHMATE_EVENT_BURST": "10000000", "HEALTHMATE_EVENT_RATE_PER_S": "10000000",
             "HEALTHMATE_USER_EVENT_BURST": "10000000", "HEALTHMATE_USER_EVENT_RATE_PER_S": "10000000",
             "HEALTHMATE_CONNECT_BURST": "10000000", "HEALTHMATE_CONNECT_RATE_PER_S": "10000000"}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError):
        return 0.0


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            kids = []
        out += kids
        todo += kids
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


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


def start_server(data_dir: str, *args: str, **env: str) -> tuple[subprocess.Popen[bytes], str, float]:
    """``healthmate serve`` on a free port; returns the process, its URL and its start-up time."""
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHMATE_")}
    full.update(HEALTHMATE_DATA_DIR=data_dir, HEALTHMATE_PORT=str(port), HEALTHMATE_LOG_LEVEL="WARNING", **env)
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", *args], env=full,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    return proc, url, wait_ready(url, proc)


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway Debian redis-server on a free port."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not installed (make bench installs it)")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                 "--dir", tmp], stdout=subprocess.DEVNULL)
        try:
            for _ in range(100):
                ping = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True)
                if ping.stdout.strip() == b"PONG":
                    break
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            stop(proc)


def post(url: str, path: str, body: Any, token: str | None = None) -> Any:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def register(url: str, role: str, tag: str) -> dict[str, Any]:
    """A new user; returns the register reply (``user``, ``access_token``, ``refresh_token``)."""
    return post(url, "/api/auth/register", {"email": f"{role}-{tag}-{time.time_ns()}@bench.example.org",
                                            "password": "bench-passphrase-long-42", "name": f"Bench {role}",
                                            "role": role})
