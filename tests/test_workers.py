"""`healthmate serve --workers 2`: two processes on one port sharing rooms through Redis, on one
embedded store started (and migrated) by the parent; a worker that dies is replaced; /metrics on either adds up
both."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp

from server.infra.embedded_store import free_port
from tests.helpers import Api, Metrics, ServerProcess, scrape


def _fresh() -> aiohttp.ClientSession:
    """A fresh connection each request, so the kernel may pick another worker."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


async def _processes(url: str, tries: int = 40) -> set[str]:
    seen = set()
    async with _fresh() as http:
        for _ in range(tries):
            async with http.get(url + "/healthz") as resp:
                seen.add((await resp.json())["process"])
    return seen


async def _scrapes(url: str) -> list[Metrics]:
    async with _fresh() as http:
        return [await scrape(http, url) for _ in range(6)]


async def test_two_workers_share_one_port_and_rooms(redis_url: str, tmp_path: Path) -> None:
    env = {"HEALTHMATE_DATA_DIR": str(tmp_path / "data"), "HEALTHMATE_MONGODB_URL": "",
           "HEALTHMATE_REDIS_URL": redis_url, "HEALTHMATE_JWT_SECRET": ""}
    server = await ServerProcess(env, free_port(), ("--workers", "2")).start()
    healthz = 0  # /healthz requests sent: both workers answered some, and each scrape counts them all
    try:
        for _ in range(60):  # the second worker may still be starting when the first answers
            workers = await _processes(server.url)
            healthz += 40
            if len(workers) == 2:
                break
            await asyncio.sleep(0.5)
        assert len(workers) == 2, workers
        async with Api(server.url) as api:
            patient = await api.register("patient")
            carer = await api.register("caregiver")
            await api.link(patient, carer)
            sockets = [await api.socket(carer) for _ in range(6)]
            await api.request("PATCH", "/api/me", patient, json={"name": "Everywhere"})
            for sock in sockets:  # whichever worker holds it
                (update,) = await sock.events.wait("patient:updated")
                assert update["name"] == "Everywhere"
            ok = {"method": "GET", "route": "/healthz", "status": "200"}
            for metrics in await _scrapes(server.url):
                assert metrics.value("healthmate_http_requests_total", **ok) == healthz
                assert metrics.value("healthmate_connections", role="caregiver") == 6
            # Kill one worker: the parent starts another; the port keeps serving.
            victim = int(next(iter(workers)).split("-")[0])
            os.kill(victim, signal.SIGKILL)
            for _ in range(100):
                replaced = await _processes(server.url, tries=10)
                healthz += 10
                if len(replaced) == 2 and next(iter(workers)) not in replaced:
                    break
                await asyncio.sleep(0.2)
            assert len(replaced) == 2 and next(iter(workers)) not in replaced
            # The dead worker's counts stay in the totals; its connections (marked dead) leave the gauge.
            for metrics in await _scrapes(server.url):
                assert metrics.value("healthmate_http_requests_total", **ok) == healthz
                assert metrics.value("healthmate_connections", role="caregiver") == \
                    sum(sock.client.connected for sock in sockets)
            status, _ = await api.request("POST", "/api/auth/login", json={"email": patient.email,
                                                                          "password": "plenty-long-passphrase-42"})
            assert status == 200
        out = "".join(server.output)
        assert "with 2 workers" in out
        # The migrations are applied once, by the parent, before any worker starts (a worker killed and started
        # again, above, finds none left either): the parent's watchdog knows to leave its stores alone meanwhile.
        assert out.count("applied migrations") == 1 and out.index("applied migrations") < out.index("started (pid")
    finally:
        assert await server.stop() == 0


async def test_workers_need_redis(tmp_path: Path) -> None:
    env = {"HEALTHMATE_DATA_DIR": str(tmp_path), "HEALTHMATE_REDIS_URL": "", "HEALTHMATE_JWT_SECRET": ""}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server.cli", "serve", "--workers", "2", env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2 and b"--workers needs HEALTHMATE_REDIS_URL" in out
