"""Start-up and shutdown: the store (the embedded one when no MongoDB URL is set) and the bulk store, Beanie on
every concern's documents, migrations, then each component started in order and stopped in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from beanie import Document, init_beanie
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from server.core.background import cancel_and_wait
from server.core.config import Settings
from server.core.ports import Component
from server.core.urgency import URGENCY
from server.infra.embedded_store import EmbeddedStore, server_stores, start_embedded
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
    stores: Stores | None = None  # while running
    demo: asyncio.Task[None] | None = None


@dataclass
class Stores:
    """The clients of one process and the embedded store processes it started (none on MongoDB)."""

    client: AsyncMongoClient  # everything but the bulk collections
    bulk: AsyncMongoClient | None  # the bulk collections', when they have a store of their own
    embedded: list[EmbeddedStore]


@contextlib.asynccontextmanager
async def connected(settings: Settings, documents: Sequence[type[Document]], bulk: Sequence[type[Document]] = (),
                    migrate: bool = False, supervised: Sequence[EmbeddedStore] = (),
                    **client_options: Any) -> AsyncIterator[Stores]:
    """The store with Beanie initialised (and migrations applied if ``migrate``).

    ``bulk`` (some of ``documents``: what bulk work writes, see ``server.app.BULK_DOCUMENTS``) lives in a store of
    its own when there is one (``HEALTHMATE_BULK_MONGODB_URL``; on the embedded store, a second store process under
    ``<data dir>/bulk``): the embedded store is one Python process, whose threads take turns on one core, so an
    alert's commands arriving while hundreds of doses are being claimed and marked waited for them (``rush``
    bench); in a process of their own, the operating system shares the cores between the two. A data dir from before
    has its bulk documents moved there once its migrations have run (``migrate``). The watchdogs of the embedded
    stores started here, and of those this process supervises for others (``supervised``: ``serve --workers``), leave
    them alone during the index builds and migrations."""
    started: list[EmbeddedStore] = []
    clients: list[AsyncMongoClient] = []
    url, bulk_url = settings.mongodb_url, settings.bulk_mongodb_url
    try:
        if url is None:
            started.extend(server_stores(settings.data_dir, settings.port, bulk_url is None and bulk))
            url, *more = await start_embedded(started)
            bulk_url = more[0] if more else bulk_url
        client = make_client(url, **client_options)
        clients.append(client)
        bulk_client = None
        if bulk_url is not None and bulk:
            bulk_client = make_client(bulk_url, "healthmate-bulk", **client_options)
            clients.append(bulk_client)
        COMMITS.enabled = settings.group_commit
        URGENCY.enabled = settings.urgent_first
        if settings.urgent_first:
            await URGENT_LANE.open(client, url, **client_options)
        with contextlib.ExitStack() as steps:  # index builds and migrations may keep a store busy for long
            for store in (*started, *supervised):
                steps.enter_context(store.unwatched())
            own = [d for d in documents if bulk_client is None or d not in bulk]
            await init_documents(client, settings.mongodb_db, own)
            if bulk_client is not None:
                await init_beanie(database=bulk_client[settings.mongodb_db], document_models=list(bulk))
            if migrate and (applied := await run_migrations(client[settings.mongodb_db], bulk)):
                log.info("applied migrations: %s", ", ".join(applied))
        yield Stores(client, bulk_client, started)
    finally:
        for client in clients:
            await within_stop_s(URGENT_LANE.close(client), "closing the urgent lane")
            await within_stop_s(client.close(), "closing a store client")
        for store in reversed(started):
            await store.stop()  # (bounded by itself: SIGKILL after 15 s)


async def within_stop_s(step: Awaitable[object], what: str) -> None:
    """One step of a shutdown, ended after ``STOP_S`` and its failure logged: a shutdown always ends, and one
    step that fails or never returns (a driver's close waiting on its own background task) keeps none of the
    others from running."""
    try:
        await asyncio.wait_for(step, STOP_S)
    except Exception:
        log.exception("%s failed", what)


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
            await within_stop_s(component.stop(), f"stopping {type(component).__name__}")


async def lifecycle(server: Server, documents: Sequence[type[Document]], bulk: Sequence[type[Document]] = (),
                    ) -> AsyncIterator[None]:
    """aiohttp's cleanup context for the whole server."""
    settings = server.settings
    async with connected(settings, documents, bulk, migrate=True,
                         serverSelectionTimeoutMS=settings.store_timeout_ms) as stores:
        server.mongo, server.stores = stores.client, stores
        try:
            async with running(server.components):
                if settings.demo:
                    from server import demo

                    server.demo = await demo.start(settings)
                yield
        finally:
            if server.redis is not None:
                await within_stop_s(server.redis.aclose(), "closing Redis")


async def stop_socketio(server: Server) -> None:
    """On shutdown, as python-socketio asks (before the web server stops): its background work (Engine.IO's
    ping checks, and the Redis manager's listening) ends with the server rather than outliving it on the event
    loop."""
    await within_stop_s(server.realtime.sio.shutdown(), "stopping Socket.IO")
    await within_stop_s(server.realtime.sio.manager.close(), "closing the Socket.IO manager")


async def stop_demo(server: Server) -> None:
    """On shutdown, before open connections are waited for: the demo devices are connections too."""
    task, server.demo = server.demo, None
    await cancel_and_wait(task)
