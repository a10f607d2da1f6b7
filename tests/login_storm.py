"""A login storm against a ``healthmate serve`` subprocess (used by tests/security/test_exhaustion.py and
bench/_login_storm.py): concurrent logins, right and wrong passwords, spread over accounts and client addresses
(a botnet behind the trusted proxy, so the throttles per account and per address leave them all to Argon2),
while ``/healthz`` and an authenticated ``sys:ping`` are asked over and over, and the server process's
memory is read from /proc (VmRSS before, VmHWM: the peak during the storm)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.helpers import Api, Sock

PROBE_TIMEOUT_S = 10.0  # a liveness bound, not a latency target


def _status_mb(pid: int, name: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(name)


def _reset_peak(pid: int) -> None:
    """VmHWM counts from now on (Linux: 5 > /proc/PID/clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@dataclass
class StormResult:
    outcomes: Counter[str] = field(default_factory=Counter)  # "200", "401", "503 busy", ...
    retry_after_missing: int = 0  # 503/429 answers without a Retry-After header
    probes: list[tuple[str, float]] = field(default_factory=list)  # (what, seconds to answer), during the storm
    idle_probes: list[tuple[str, float]] = field(default_factory=list)  # the same just before it (the baseline)
    rss_before_mb: float = 0.0
    peak_mb: float = 0.0
    storm_s: float = 0.0  # from the first login sent to the last answer

    @property
    def growth_mb(self) -> float:
        return self.peak_mb - self.rss_before_mb


async def _login(http: aiohttp.ClientSession, url: str, email: str, password: str, addr: str,
                 result: StormResult) -> None:
    async with http.post(url + "/api/auth/login", json={"email": email, "password": password},
                         headers={"X-Forwarded-For": addr}) as resp:
        reply = await resp.json()
        code = reply["error"]["code"] if resp.status >= 400 else ""
        result.outcomes[f"{resp.status} {code}".strip()] += 1
        if resp.status in (429, 503) and "Retry-After" not in resp.headers:
            result.retry_after_missing += 1


async def _probe(api: Api, sock: Sock, done: asyncio.Event, into: list[tuple[str, float]],
                 rounds: int | None = None) -> None:
    """``/healthz`` then ``sys:ping``, every 50 ms, until ``done`` (or for ``rounds``); timings of the ones
    answered before ``done``."""
    while not done.is_set() and (rounds is None or len(into) < 2 * rounds):
        t0 = time.perf_counter()
        async with api.http.get(api.base_url + "/healthz", timeout=aiohttp.ClientTimeout(PROBE_TIMEOUT_S)) as resp:
            assert resp.status == 200, resp.status
        t1 = time.perf_counter()
        reply = await sock.call("sys:ping", {"t": 1.0}, timeout=PROBE_TIMEOUT_S)
        assert reply["ok"] is True, reply
        t2 = time.perf_counter()
        if not done.is_set():
            into += [("healthz", t1 - t0), ("sys:ping", t2 - t1)]
        await asyncio.sleep(0.05)


def login_plan(emails: list[str], password: str, logins: int) -> list[tuple[str, str]]:
    """``logins`` (email, password) over the accounts in turn, each account's right, wrong, right, ... (so no
    account reaches the per-account limit of 5 failures)."""
    return [(emails[i % len(emails)], password if (i // len(emails)) % 2 == 0 else "a-wrong-passphrase")
            for i in range(logins)]


async def storm(url: str, pid: int, logins: list[tuple[str, str]], probe_token: str) -> StormResult:
    """Every login of ``logins`` at once, each from its own address; the probes' socket signs in with
    ``probe_token``; ``pid`` is the server process measured."""
    result = StormResult()
    async with Api(url) as api:
        sock = await api.socket(token=probe_token)
        done = asyncio.Event()
        await _probe(api, sock, done, result.idle_probes, rounds=20)
        _reset_peak(pid)
        result.rss_before_mb = _status_mb(pid, "VmRSS")
        probing = asyncio.create_task(_probe(api, sock, done, result.probes))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            t0 = time.perf_counter()
            try:
                await asyncio.gather(*(_login(http, url, email, password, f"10.{i // 250}.{i % 250}.1", result)
                                       for i, (email, password) in enumerate(logins)))
            finally:
                result.storm_s = time.perf_counter() - t0
                done.set()
                await probing
        result.peak_mb = _status_mb(pid, "VmHWM")
    return result
