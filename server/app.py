"""The application factory: builds the services, mounts REST and Socket.IO, and runs the
start-up sequence (embedded store if no MongoDB URL, Beanie, migrations, control bus)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from redis.asyncio import Redis

from server import (
    accounts,
    alerts,
    audit,
    blood_pressure,
    contacts,
    device_registry,
    health,
    linking,
    medications,
    notifications,
    patients,
    waveform_store,
)
from server import scheduler as scheduler_module
from server import vitals as vitals_module
from server.alerts import Alerts
from server.auth import AuthService
from server.blood_pressure import BloodPressure
from server.bus import ControlBus
from server.config import Settings
from server.contacts import Contacts
from server.db import init_documents, make_client
from server.embedded_store import EmbeddedStore
from server.http import SERVICES, error_middleware
from server.live import LiveHub
from server.medications import Medications
from server.medicine_box import MedicineBox
from server.migrations import run_migrations
from server.notifications import Notifications
from server.push import PushDispatcher
from server.push_providers import providers_from
from server.ratelimit import FailureCounter
from server.realtime import Realtime
from server.scheduler import Scheduler
from server.security import TokenService
from server.services import Services
from server.streams import StreamService
from server.vitals import Vitals
from server.waveform_store import HistoryWriter, apply_retention

log = logging.getLogger(__name__)
DOCS = Path(__file__).resolve().parent.parent / "docs"


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    svc = app[SERVICES]
    settings = svc.settings
    url = settings.mongodb_url
    if url is None:
        svc.store = EmbeddedStore(settings.data_dir)
        url = await svc.store.start()
        log.info("data lives in %s", settings.data_dir.resolve())
    svc.mongo = make_client(url, serverSelectionTimeoutMS=settings.store_timeout_ms)
    try:
        await init_documents(svc.mongo, settings.mongodb_db)
        applied = await run_migrations(svc.mongo[settings.mongodb_db])
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        await svc.bus.start()
        await svc.realtime.start()
        await svc.live.start()
        svc.writer.start()
        svc.streams.start()
        await svc.alerts.start()  # type: ignore[union-attr]
        svc.push.start()  # type: ignore[union-attr]
        if svc.scheduler is not None:
            await svc.scheduler.start()
        retention = asyncio.create_task(_retention(settings.raw_retention_days), name="retention")
        yield
    finally:
        if "retention" in locals():
            retention.cancel()
        if svc.scheduler is not None:
            await svc.scheduler.stop()
        await svc.alerts.stop()  # type: ignore[union-attr]
        await svc.push.stop()  # type: ignore[union-attr]
        await svc.streams.stop()
        await svc.writer.stop()
        await svc.live.stop()
        await svc.notifications.stop()
        await svc.realtime.stop()
        await svc.bus.stop()
        await svc.mongo.close()
        if svc.redis is not None:
            await svc.redis.aclose()
        if svc.store is not None:
            await svc.store.stop()


async def _retention(raw_days: int) -> None:
    while True:
        try:
            removed = await apply_retention(raw_days)
            if removed:
                log.info("retention: removed %d raw waveform buckets older than %d days", removed, raw_days)
        except Exception as exc:
            log.warning("retention pass failed: %s", exc)
        await asyncio.sleep(3600)


def _doc_route(name: str, content_type: str) -> web.RouteDef:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=(DOCS / name).read_bytes(), content_type=content_type)

    return web.get(f"/api/{name}", handler)


async def index(request: web.Request) -> web.Response:
    return web.json_response({"service": "healthmate", "openapi": "/api/openapi.yaml",
                              "asyncapi": "/api/asyncapi.yaml"})


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=settings.max_body_bytes)
    redis = Redis.from_url(settings.redis_url) if settings.redis_url else None
    bus = ControlBus(redis)
    tokens = TokenService(settings.secret, settings.jwt_issuer, settings.access_token_ttl_s,
                          settings.refresh_token_ttl_s)
    failures = FailureCounter(settings.login_failure_window_s, redis)
    auth = AuthService(settings, tokens, failures, bus)
    realtime = Realtime(settings, auth, bus, redis)
    live = LiveHub(realtime, redis)
    bus.on("link_changed", live.revoke_member)
    notes = Notifications(realtime)
    vitals = Vitals(realtime, bus)
    writer = HistoryWriter()
    streams = StreamService(realtime, live, vitals, writer, settings.analysis_workers)
    vitals.on_thresholds_changed.append(streams.apply_thresholds)
    bp = BloodPressure(realtime)
    alerting = Alerts(settings, realtime, bus, notes)
    push = PushDispatcher(settings, realtime, providers_from(settings))
    bp.on_crisis.append(alerting.on_bp_crisis)
    vitals.sinks.append(alerting.on_vital_event)
    notes.pushers.append(push.push)
    svc = Services(settings=settings, tokens=tokens, bus=bus, failures=failures, auth=auth, realtime=realtime,
                   live=live, notifications=notes, vitals=vitals, writer=writer, streams=streams, redis=redis,
                   bp=bp, contacts=Contacts(realtime), alerts=alerting, push=push)
    app[SERVICES] = svc
    realtime.attach(app)
    accounts.setup(app)
    linking.setup(app, svc)
    patients.setup(app, realtime)
    audit.setup(app)
    notifications.setup(app)
    device_registry.setup(app)
    waveform_store.setup(app)
    vitals_module.setup(app)
    blood_pressure.setup(app)
    contacts.setup(app)
    alerts.setup(app)
    health.setup(app)
    svc.medications = Medications(svc)
    medications.setup(app)
    svc.scheduler = Scheduler(svc, svc.medications)
    scheduler_module.setup(app)
    svc.medicine_box = MedicineBox(svc, svc.scheduler)
    app.router.add_routes([_doc_route("openapi.yaml", "application/yaml"),
                           _doc_route("asyncapi.yaml", "application/yaml"), web.get("/", index)])
    app.cleanup_ctx.append(_lifecycle)
    return app
