"""Faults: the store going away and coming back, Redis going away and coming back.
Nothing acknowledged is lost; what cannot be stored is refused with a clear error."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
from pathlib import Path

import aiohttp
import pytest
from redis import Redis

from server import lifecycle
from server.app import SERVER, create_app
from server.care.documents import User
from server.infra.embedded_store import EmbeddedStore, free_port
from tests.alert_clients import crisis, device_sock
from tests.conftest import make_settings
from tests.helpers import Api, process_alive, process_env, scrape, scrape_until, server_processes
from tests.streaming import device_socket, ecg, frame, open_stream, pair


async def _ready(http: aiohttp.ClientSession, base: str) -> tuple[int, dict]:
    async with http.get(base + "/readyz") as resp:
        return resp.status, await resp.json()


async def test_store_outage_refuses_clearly_and_recovers(tmp_path: Path, aiohttp_server) -> None:  # type: ignore[no-untyped-def]
    """An external store (as MongoDB would be) stops: requests are refused with `store_unavailable`
    (503, Retry-After), readiness says not ready, nothing half-written; after it returns, all works.
    /metrics counts the outage, its seconds and the refusals."""
    store = EmbeddedStore(tmp_path / "store")
    await store.start()
    settings = make_settings(store.url, tmp_path, store_timeout_ms=800)
    server = await aiohttp_server(create_app(settings))
    base = str(server.make_url("")).rstrip("/")
    async with Api(base, server.app) as api, aiohttp.ClientSession() as http:
        patient = await api.register("patient")
        sock = await api.socket(patient)
        before = await scrape(http, base)
        await store.stop()
        status, body = await _ready(http, base)
        assert status == 503 and body["error"]["details"]["checks"]["store"].startswith("down")
        status, body = await api.request("POST", "/api/auth/register", json={
            "email": "during@example.org", "password": "plenty-long-passphrase-42", "name": "D", "role": "patient"})
        assert status == 503 and body["error"]["code"] == "store_unavailable"
        reply = await sock.call("links:create-code")
        assert reply["ok"] is False and reply["error"]["code"] == "store_unavailable"
        assert reply["error"]["details"]["retry_after_s"] > 0
        during = await scrape_until(http, base, lambda m: m.value("healthmate_store_up") == 0)
        # At least one: the driver may see the store flap as it shuts down (one connection still answering).
        assert during.value("healthmate_store_outages_total") >= before.value("healthmate_store_outages_total") + 1
        assert during.value("healthmate_events_total", event="links:create-code", outcome="store_unavailable") == \
            before.value("healthmate_events_total", event="links:create-code", outcome="store_unavailable") + 1
        register_503 = {"method": "POST", "route": "/api/auth/register", "status": "503"}
        assert during.value("healthmate_http_requests_total", **register_503) == \
            before.value("healthmate_http_requests_total", **register_503) + 1
        await store.start()  # same port and files
        for _ in range(100):
            if (await _ready(http, base))[0] == 200:
                break
            await asyncio.sleep(0.1)
        assert (await _ready(http, base))[0] == 200
        after = await scrape_until(http, base, lambda m: m.value("healthmate_store_up") == 1)
        assert after.value("healthmate_store_unavailable_seconds_total") > \
            before.value("healthmate_store_unavailable_seconds_total")
        assert await User.find(User.email == "during@example.org").count() == 0
        assert (await sock.call("links:create-code"))["ok"] is True
        status, _ = await api.request("GET", "/api/me", patient)
        assert status == 200
    await store.stop()


@pytest.fixture
def own_redis(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A Redis of this test's own, so stopping it touches no other test."""
    exe = shutil.which("redis-server")
    assert exe is not None
    port = free_port()

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                 "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
        for _ in range(100):
            try:
                Redis(port=port).ping()
                return proc
            except Exception:
                import time

                time.sleep(0.05)
        raise RuntimeError("redis did not start")

    procs = [start()]
    yield f"redis://127.0.0.1:{port}/0", procs, start
    for p in procs:
        p.terminate()


async def test_redis_outage_single_process_serves_and_cross_process_resumes(
        store: EmbeddedStore, own_redis, tmp_path: Path, aiohttp_server) -> None:  # type: ignore[no-untyped-def]
    url, procs, start = own_redis
    settings = make_settings(store.url, tmp_path, redis_url=url)
    one = await aiohttp_server(create_app(settings))
    two = await aiohttp_server(create_app(settings.model_copy(update={"port": 0})))
    base_one, base_two = (str(s.make_url("")).rstrip("/") for s in (one, two))
    async with Api(base_one, one.app) as api_one, Api(base_two, two.app) as api_two:
        patient = await api_one.register("patient")
        carer = await api_one.register("caregiver")
        await api_one.link(patient, carer)
        carer_on_two = await api_two.socket(carer)
        procs[0].terminate()
        procs[0].wait(10)
        await asyncio.sleep(10)  # Redis down for 10 s
        # Each process keeps serving what needs no other process: auth, reads, writes to the store.
        status, _ = await api_one.request("PATCH", "/api/me", patient, json={"name": "Still here"})
        assert status == 200
        patient_on_one = await api_one.socket(patient)
        assert (await patient_on_one.call("patients:list"))["ok"] is True
        procs.append(start())
        # Cross-process delivery resumes once Redis is back (the managers reconnect by themselves).
        for attempt in range(60):
            await api_one.request("PATCH", "/api/me", patient, json={"name": f"Back {attempt}"})
            try:
                await carer_on_two.events.wait("patient:updated", timeout=0.5)
                break
            except TimeoutError:
                continue
        assert carer_on_two.events.of("patient:updated"), "cross-process delivery did not resume"
        # What was persisted during the outage is there.
        status, me = await api_two.request("GET", "/api/me", patient)
        assert status == 200 and me["name"].startswith("Back")


async def test_server_killed_mid_stream_devices_and_watchers_fail_over(store: EmbeddedStore, redis_url: str,
                                                                        tmp_path: Path) -> None:
    """Two processes behind a balancer; the one holding a streaming device and a watcher is SIGKILLed.
    Both reconnect to the other: the stream goes on under its id with the gap recorded and shown, and
    the crisis alert raised just before the crash reaches the caregiver there."""
    env = process_env(store.url, tmp_path, redis_url)
    async with server_processes(env, env) as (doomed, survivor):
        async with Api(doomed.url) as api_a, Api(survivor.url) as api_b:
            patient = await api_a.register("patient")
            carer = await api_a.register("caregiver")
            await api_a.link(patient, carer)
            credential = (await pair(api_a, patient))["credential"]
            device = await device_socket(api_a, credential)
            stream_id = await open_stream(device)
            watcher = await device_sock(doomed.url, carer, "carer-phone")
            await watcher.ok("live:subscribe", {"patient_id": patient.id})
            samples = ecg(1.0)
            for seq in range(5):
                assert (await device.ok("stream:frame", frame(stream_id, seq, samples, 250.0)))["status"] == "ok"
            await watcher.events.wait("live:frame", count=5)
            await (await device_sock(doomed.url, patient)).ok("bp:add", crisis())
            await watcher.events.wait("alert:new")
            await asyncio.sleep(1.5)  # the stream's position is checkpointed within a second
            assert await doomed.stop(signal.SIGKILL) == -signal.SIGKILL

            device = await device_socket(api_b, credential)
            watcher = await device_sock(survivor.url, carer, "carer-phone")
            await watcher.ok("live:subscribe", {"patient_id": patient.id})
            replies = [await device.ok("stream:frame", frame(stream_id, seq, samples, 250.0)) for seq in range(8, 12)]
            assert [r["status"] for r in replies] == ["gap", "ok", "ok", "ok"]
            (gap,) = await watcher.events.wait("live:gap")
            # At least the 3 frames never sent; also those the dead process held unflushed (lost with it).
            assert gap["stream_id"] == stream_id and 3 <= gap["missing_frames"] <= 8
            await watcher.events.wait("live:frame", count=4)
            (alert,) = await watcher.events.wait("alert:new")  # not confirmed on the dead process: redelivered
            assert alert["kind"] == "bp_crisis" and alert["patient"]["id"] == patient.id
            status, streams = await api_b.request("GET", f"/api/patients/{patient.id}/streams", carer)
            assert status == 200 and streams["items"][0]["id"] == stream_id
            for sock in (device, watcher):
                await sock.close()


async def test_a_shutdown_step_that_never_returns_keeps_none_of_the_others_from_running(
        tmp_path: Path, aiohttp_server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        ) -> None:  # type: ignore[no-untyped-def]
    """The store client's close and the last component's stop never return: the shutdown still ends, within
    ``STOP_S`` a step, having stopped the other components and both embedded store processes."""
    monkeypatch.setattr(lifecycle, "STOP_S", 0.5)
    app = create_app(make_settings("unused", tmp_path, mongodb_url=None))
    server = await aiohttp_server(app)
    running = app[SERVER]
    assert running.stores is not None and len(running.stores.embedded) == 2
    pids = [s.proc.pid for s in running.stores.embedded if s.proc is not None]
    stopped: list[str] = []

    async def never() -> None:
        await asyncio.Event().wait()

    def recording(component: object) -> object:
        stop = component.stop  # type: ignore[attr-defined]

        async def recorded() -> None:
            await stop()
            stopped.append(type(component).__name__)
        return recorded

    *others, last = running.components
    close, last_stop = running.mongo.close, last.stop
    for component in others:
        monkeypatch.setattr(component, "stop", recording(component))
    monkeypatch.setattr(last, "stop", never)
    monkeypatch.setattr(running.mongo, "close", never)
    try:
        await asyncio.wait_for(server.close(), 60)
    finally:  # closed and stopped for real: a client left open would count as a store outage for later tests
        await close()
        await last_stop()
    assert stopped == [type(c).__name__ for c in reversed(others)]
    assert not any(process_alive(pid) for pid in pids), "an embedded store outlived its server's shutdown"
    assert f"stopping {type(last).__name__} failed" in caplog.text and "closing a store client failed" in caplog.text

