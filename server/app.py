"""The wiring: builds every service, hands each concern the Protocol implementations it needs, mounts
each concern's ``api.py`` and lists the components ``server.lifecycle`` starts in order and stops in
reverse."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from aiohttp import web
from beanie import Document
from redis.asyncio import Redis

from devices import api as devices_api
from devices import documents as device_documents
from devices import mqtt_bridge
from devices.api import SocketCommands
from devices.box_service import MedicineBox
from devices.presence import DevicePresence
from devices.registry import DeviceRegistry, authenticate_device
from media import api as media_api
from media.device_host import DeviceRtc
from server import health
from server import metrics as metrics_api
from server import overview as overview_api
from server.alerts import api as alerts_api
from server.alerts import documents as alert_documents
from server.alerts.alerts import Alerts
from server.alerts.device_delivery import DeviceDelivery
from server.alerts.notifications import Notifications
from server.alerts.push import PushDispatcher
from server.alerts.push_providers import providers_from
from server.care import api as care_api
from server.care import documents as care_documents
from server.care.access import patients_of
from server.care.accounts import Profiles
from server.care.auth import AuthService
from server.care.contacts import Contacts
from server.care.linking import Linking
from server.care.orgs import Organisations
from server.care.security import TokenService
from server.care.uploads import Uploads
from server.core.config import Settings
from server.core.errors import ApiError
from server.core.identity import Principal
from server.dashboard import setup as setup_dashboard
from server.infra.mailer import Mailer
from server.infra.presence import Presence
from server.infra.pubsub import ControlBus, make_pubsub
from server.infra.ratelimit import FailureCounter, HeavyReads
from server.lifecycle import Server, lifecycle, stop_demo, stop_socketio
from server.meds import api as meds_api
from server.meds import documents as meds_documents
from server.meds.medications import Medications
from server.meds.scheduler import Scheduler
from server.streaming import api as streaming_api
from server.streaming import documents as streaming_documents
from server.streaming.history import HistoryWriter
from server.streaming.ingest import StreamService
from server.streaming.live import LiveHub
from server.transport.events import EventRouter
from server.transport.http import Rest, count_requests, error_middleware
from server.transport.mount import Mount
from server.transport.realtime import Realtime
from server.vitals import api as vitals_api
from server.vitals import documents as vitals_documents
from server.vitals.blood_pressure import BloodPressure
from server.vitals.bp_history import BPHistory
from server.vitals.events import Vitals, alerts_to
from server.vitals.forecast import BPForecasts
from server.vitals.model_registry import ModelRegistry
from server.vitals.triage import Triage
from signaling import api as calls_api
from signaling import documents as call_documents
from signaling.calls import Calls

log = logging.getLogger(__name__)
# What the store holds: every concern's documents.
DOCUMENTS: list[type[Document]] = [*care_documents.DOCUMENTS, *vitals_documents.DOCUMENTS, *call_documents.DOCUMENTS,
                                   *alert_documents.DOCUMENTS, *meds_documents.DOCUMENTS, *device_documents.DOCUMENTS,
                                   *streaming_documents.DOCUMENTS]
# Of them, what bulk work writes (08:00's doses, their claims and box states, reminder notifications, waveform
# history and the streams' analyses): in a store of their own where there is one (server.lifecycle.connected), so
# that alerts never share the embedded store's one core, nor its writes' turns, with it. Each is read and written
# through its own class only (no query joins it with another collection).
BULK_DOCUMENTS: list[type[Document]] = [meds_documents.DoseEvent, meds_documents.DoseClaim,
                                        device_documents.MedicineBoxState, alert_documents.Notification,
                                        streaming_documents.WaveBucket, streaming_documents.AnalysisChunk]
DOCS = Path(__file__).resolve().parent.parent / "docs"


SERVER = web.AppKey("server", Server)
REST = web.AppKey("rest", Rest)  # with every route's contract (rest.docs)


def _doc_routes(m: Mount) -> None:
    async def openapi(request: web.Request) -> web.Response:
        """This document (OpenAPI 3.1)."""
        return web.Response(body=(DOCS / "openapi.yaml").read_bytes(), content_type="application/yaml")

    async def asyncapi(request: web.Request) -> web.Response:
        """The Socket.IO events (AsyncAPI 3.0)."""
        return web.Response(body=(DOCS / "asyncapi.yaml").read_bytes(), content_type="application/yaml")

    m.route("GET", "/api/openapi.yaml", openapi, media="application/yaml", public=True)
    m.route("GET", "/api/asyncapi.yaml", asyncapi, media="application/yaml", public=True)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[count_requests, error_middleware], client_max_size=settings.max_body_bytes)
    redis = Redis.from_url(settings.redis_url) if settings.redis_url else None
    pubsub = make_pubsub(redis)
    bus = ControlBus(pubsub)
    tokens = TokenService(settings.secret, settings.jwt_issuer, settings.access_token_ttl_s,
                          settings.refresh_token_ttl_s)
    failures = FailureCounter(settings.login_failure_window_s, redis)
    auth = AuthService(settings, tokens, failures, bus)

    async def authenticate(handshake: Any) -> Principal:
        handshake = handshake if isinstance(handshake, dict) else {}
        device_token, token = handshake.get("device_token"), handshake.get("token")
        if isinstance(device_token, str) and device_token:
            return (await authenticate_device(device_token))[0]
        if not isinstance(token, str) or not token:
            raise ApiError("token_missing", "Connect with auth={'token': <access token>} "
                           "(or {'device_token': <device credential>})", 401)
        return await auth.authenticate(token)

    realtime = Realtime(settings, EventRouter(settings), Presence(redis), authenticate, patients_of)
    rest = Rest(auth.authenticate, settings.trust_forwarded)
    mount = Mount(realtime.router, app.router, rest, realtime)  # what each concern's api.mount() is given
    bus.on("sessions_revoked", realtime.apply_sessions_revoked)
    bus.on("link_changed", realtime.apply_link_changed)
    bus.on("device_revoked", realtime.apply_device_revoked)
    live = LiveHub(realtime, pubsub)
    bus.on("link_changed", live.revoke_member)
    notes = Notifications(realtime)  # its per-device delivery is handed over with the push below
    vitals = Vitals(realtime, bus, notes)
    writer = HistoryWriter(settings.raw_retention_days)
    streams = StreamService(live, vitals, writer, settings.analysis_workers)
    vitals.on_thresholds_changed.append(streams.apply_thresholds)
    bus.on("device_revoked", streams.device_revoked)
    bp = BloodPressure(realtime)
    alerting = Alerts(settings, bus, realtime, notes)
    push = PushDispatcher(settings, providers_from(settings))
    alerts_api.mount(mount, alerting, notes, push)
    bp.on_crisis.append(alerting.on_bp_crisis)
    vitals.sinks.append(alerting.on_vital_event)  # critical events: emergency alerts, escalated
    vitals.sinks.append(alerts_to(notes))  # the others: notifications
    delivery = DeviceDelivery(settings, push, realtime)  # what each device gets pushed, and when
    notes.delivery = delivery
    presence = DevicePresence(realtime, notes, settings.device_silence_s)
    models = ModelRegistry(bus)
    forecasts = BPForecasts(realtime, models, BPHistory(streaming_documents.AnalysisChunk.get_pymongo_collection))
    bp.on_added.append(forecasts.on_reading)
    triage = Triage(alerting)
    contacts = Contacts(realtime)
    uploads = Uploads(settings.upload_max_bytes, settings.upload_max_dimension)
    profiles = Profiles(realtime, uploads)
    mqtt, broker_files = mqtt_bridge.from_settings(settings, realtime.router, realtime.process_id, bus)
    realtime.attach(app)
    orgs = Organisations(auth, Mailer.from_settings(settings), settings.invitation_ttl_s, settings.public_url)
    care_api.mount(mount, auth, profiles, Linking(realtime, bus, failures, settings), contacts, uploads, orgs)
    heavy = HeavyReads(FailureCounter(60, redis), settings.heavy_reads_per_minute)  # FHIR export, long analyses
    streaming_api.mount(mount, streams, live, heavy)
    vitals_api.mount(mount, bp, vitals, forecasts, triage, heavy)
    calls = Calls(settings, bus, pubsub, realtime.presence, realtime, realtime, notes, delivery.push, delivery)
    calls_api.mount(mount, calls)
    rtc = DeviceRtc(realtime.router)
    media_api.mount(mount, rtc)
    medications = Medications(realtime, notes, uploads)
    scheduler = Scheduler(settings, realtime, notes, medications)
    profiles.on_timezone_changed.append(scheduler.replan_patient)
    meds_api.mount(mount, medications, scheduler)
    box = MedicineBox(SocketCommands(realtime), realtime, notes, scheduler)
    devices_api.mount(mount, DeviceRegistry(bus), presence, box, mqtt)
    server = Server(settings=settings, redis=redis, realtime=realtime, auth=auth, notifications=notes, push=push,
                    live=live, streams=streams, vitals=vitals, models=models, calls=calls, scheduler=scheduler, rtc=rtc,
                    mqtt=mqtt)
    server.components = [pubsub, bus, realtime.presence, live, notes, writer, streams, forecasts, calls, push,
                         delivery, alerting, models, presence, *(c for c in (broker_files, mqtt) if c is not None),
                         scheduler, rtc]
    app[SERVER] = server
    app[REST] = rest
    health.mount(mount, server)
    metrics_api.mount(mount, settings)
    overview_api.mount(mount)
    _doc_routes(mount)
    setup_dashboard(app, mount, settings.trust_forwarded)
    app.cleanup_ctx.append(lambda _app: lifecycle(server, DOCUMENTS, BULK_DOCUMENTS))
    app.on_shutdown.append(lambda _app: stop_demo(server))
    app.on_shutdown.append(lambda _app: stop_socketio(server))
    return app
