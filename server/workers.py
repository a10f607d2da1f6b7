"""``healthmate serve --workers N``: N server processes on one port, sharing rooms through Redis.

The parent starts the embedded store once for all workers (when no MongoDB URL is set), builds the indexes and
applies the migrations once (``_prepare``), starts N ``healthmate serve --reuse-port`` children bound to the same
address (SO_REUSEPORT: the kernel spreads new connections over them), restarts a child that dies, and stops them
all on SIGTERM or Ctrl-C.
A Socket.IO websocket stays on the worker that accepted it. Long-polling needs every request of a
session to reach one worker, which SO_REUSEPORT does not promise: clients of a multi-worker server use
the websocket transport, or a balancer with sticky sessions sits in front (compose.yaml's nginx).

Metrics: the workers count into files in a private ``PROMETHEUS_MULTIPROC_DIR`` the parent makes (and removes
at the end), so ``/metrics`` on whichever worker a scrape reaches adds up all of them; a worker that exits is
marked dead there (its live gauges, such as its connections, go; its counts stay in the totals).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile

from prometheus_client import multiprocess

from server.app import BULK_DOCUMENTS, DOCUMENTS
from server.core.config import ConfigError, Settings
from server.infra.embedded_store import EmbeddedStore, server_stores, start_embedded
from server.infra.metrics import MULTIPROC_ENV
from server.lifecycle import connected

log = logging.getLogger("healthmate.workers")
RESTART_DELAY_S = 1.0


async def _run_worker(index: int, env: dict[str, str], stopping: asyncio.Event) -> None:
    """Keep worker ``index`` running until ``stopping`` is set."""
    while not stopping.is_set():
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "server.cli", "serve", "--reuse-port",
                                                    env=env, stdin=asyncio.subprocess.DEVNULL)
        log.info("worker %d started (pid %d)", index, proc.pid)
        waiter = asyncio.create_task(proc.wait())
        stop = asyncio.create_task(stopping.wait())
        try:
            await asyncio.wait({waiter, stop}, return_when=asyncio.FIRST_COMPLETED)
            if stopping.is_set():
                if proc.returncode is None:
                    proc.terminate()
                    try:
                        await asyncio.wait_for(waiter, 20)
                    except TimeoutError:
                        proc.kill()
                        await waiter
                return
            stop.cancel()
        finally:
            multiprocess.mark_process_dead(proc.pid, env[MULTIPROC_ENV])
        log.error("worker %d (pid %d) exited with %s; restarting", index, proc.pid, proc.returncode)
        await asyncio.sleep(RESTART_DELAY_S)


async def _prepare(settings: Settings, stores: list[EmbeddedStore]) -> None:
    """The stores' indexes and migrations, once, before any worker starts: here the watchdog of the embedded stores
    this process supervises knows to leave them alone while these steps may keep them busy (``connected``), which
    it cannot while a worker runs them; the workers then find nothing left to do."""
    async with connected(settings, DOCUMENTS, BULK_DOCUMENTS, migrate=True, supervised=stores,
                         serverSelectionTimeoutMS=settings.store_timeout_ms):
        pass


async def serve_workers(settings: Settings, workers: int) -> None:
    if not settings.redis_url:
        raise ConfigError("--workers needs HEALTHMATE_REDIS_URL: the workers share Socket.IO rooms through Redis")
    env = {**os.environ, "HEALTHMATE_HOST": settings.host, "HEALTHMATE_PORT": str(settings.port),
           "HEALTHMATE_DATA_DIR": str(settings.data_dir), "HEALTHMATE_JWT_SECRET": settings.secret,
           MULTIPROC_ENV: tempfile.mkdtemp(prefix="healthmate-metrics-")}  # 0700, this server's alone
    stores: list[EmbeddedStore] = []
    if settings.mongodb_url is None:  # the embedded store and the bulk store (server.lifecycle.connected), shared
        stores = server_stores(settings.data_dir, settings.port, settings.bulk_mongodb_url is None)
        urls = dict(zip(("mongodb_url", "bulk_mongodb_url"), await start_embedded(stores), strict=False))
        env.update({f"HEALTHMATE_{field.upper()}": url for field, url in urls.items()})
        settings = settings.model_copy(update=urls)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await _prepare(settings, stores)
        log.info("serving on http://%s:%s with %d workers", settings.host, settings.port, workers)
        await asyncio.gather(*[_run_worker(i, env, stopping) for i in range(workers)])
    finally:
        for store in reversed(stores):
            with contextlib.suppress(Exception):
                await store.stop()
        shutil.rmtree(env[MULTIPROC_ENV], ignore_errors=True)
