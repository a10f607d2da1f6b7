"""Start-up and shutdown: the store (the embedded one when no MongoDB URL is set), Beanie on every
concern's documents, migrations, then each component started in order and stopped in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from beanie import Document
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from server.core.config import Settings
from server.core.ports import Component
from server.core.urgency import URGENCY
from server.infra.embedded_store import EmbeddedStore
from server.infra.group_commit import COMMITS
from server.infra.migrations import run_migrations
from server.infra.store import URGENT_LANE, init_documents, make_client

if TYPE_CHECKING:
    from devices.mqtt_bridge import MqttBridge
    from media.device_host import DeviceRtc
    from server.alerts.notifications import Notifications
    from server.alerts.push import PushDispatcher
    from server.care.auth import AuthService
    from server.meds.scheduler import Scheduler
    from server.streaming.ingest import StreamService
    from server.streaming.live import LiveHub
    from server.transport.realtime import Realtime
    from server.vitals.events import Vitals
    from server.vitals.model_registry import ModelRegistry
    from signaling.calls import Calls

log = logging.getLogger(__name__)
STOP_S = 20.0  # the longest one component's stop may take at shutdown


@dataclass
class Server:
    """What one server process runs, built once by ``create_app`` (tests reach parts through ``app[SERVER]``;
    no request handler looks anything up here: each is bound to its services when mounted)."""

    settings: Settings
    redis: Redis | None
    realtime: Realtime
    auth: AuthService
    notifications: Notifications
    push: PushDispatcher
    live: LiveHub
    streams: StreamService
    vitals: Vitals
    models: ModelRegistry
    calls: Calls
    scheduler: Scheduler
    rtc: DeviceRtc
    mqtt: MqttBridge | None
    components: list[Component] = field(default_factory=list)  # started in this order, stopped in reverse
    mongo: AsyncMongoClient | None = None  # while running
    store: EmbeddedStore | None = None  # the embedded store, when no MongoDB URL is set
    demo: asyncio.Task[None] | None = None


@contextlib.asynccontextmanager
async def connected(settings: Settings, documents: Sequence[type[Document]], migrate: bool = False,
                    **client_options: Any) -> AsyncIterator[tuple[AsyncMongoClient, EmbeddedStore | None]]:
    """The store with Beanie initialised (and migrations applied if ``migrate``); yields the PyMongo client
    and the embedded store this started, if it started one."""
    store = None
    url = settings.mongodb_url
    if url is None:
        store = EmbeddedStore(settings.data_dir)
        url = await store.start()
        log.info("data lives in %s", settings.data_dir.resolve())
    client = make_client(url, **client_options)
    COMMITS.enabled = settings.group_commit
    URGENCY.enabled = settings.urgent_first
    try:
        if settings.urgent_first:
            await URGENT_LANE.open(client, url, **client_options)
        await init_documents(client, settings.mongodb_db, list(documents))
        if migrate and (applied := await run_migrations(client[settings.mongodb_db])):
            log.info("applied migrations: %s", ", ".join(applied))
        yield client, store
    finally:
        await URGENT_LANE.close(client)
        await client.close()
        if store is not None:
            await store.stop()


@contextlib.asynccontextmanager
async def running(components: Sequence[Component]) -> AsyncIterator[None]:
    """Each component started in order; on the way out (or if one fails to start) those started are
    stopped in reverse, each stop's failure (or a stop still going after ``STOP_S``) logged without keeping
    the others from stopping: a shutdown always ends."""
    started: list[Component] = []
    try:
        for component in components:
            await component.start()
            started.append(component)
        yield
    finally:
        for component in reversed(started):
            try:
                await asyncio.wait_for(component.stop(), STOP_S)
            except Exception:
                log.exception("stopping %s failed", type(component).__name__)


async def lifecycle(server: Server, documents: Sequence[type[Document]]) -> AsyncIterator[None]:
    """aiohttp's cleanup context for the whole server."""
    settings = server.settings
    async with connected(settings, documents, migrate=True,
                         serverSelectionTimeoutMS=settings.store_timeout_ms) as (client, store):
        server.mongo, server.store = client, store
        try:
            async with running(server.components):
                if settings.demo:
                    from server import demo

                    server.demo = await demo.start(settings)
                yield
        finally:
            if server.redis is not None:
                await server.redis.aclose()


async def stop_socketio(server: Server) -> None:
    """On shutdown, as python-socketio asks (before the web server stops): its background work (Engine.IO's
    ping checks) ends with the server rather than outliving it on the event loop."""
    try:
        await asyncio.wait_for(server.realtime.sio.shutdown(), STOP_S)
    except Exception:
        log.exception("stopping Socket.IO failed")


async def stop_demo(server: Server) -> None:
    """On shutdown, before open connections are waited for: the demo devices are connections too."""
    task, server.demo = server.demo, None
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
