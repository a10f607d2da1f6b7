"""What a running server holds: the shared objects handlers reach through the app."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pymongo import AsyncMongoClient
    from redis.asyncio import Redis

    from devices.box_service import MedicineBox
    from devices.mqtt_bridge import MqttBridge
    from devices.mqtt_broker import BrokerFiles
    from devices.presence import DevicePresence
    from server.alerts.alerts import Alerts
    from server.alerts.notifications import Notifications
    from server.alerts.push import PushDispatcher
    from server.care.auth import AuthService
    from server.care.contacts import Contacts
    from server.care.security import TokenService
    from server.core.config import Settings
    from server.infra.embedded_store import EmbeddedStore
    from server.infra.pubsub import ControlBus, PubSub
    from server.infra.ratelimit import FailureCounter
    from server.meds.medications import Medications
    from server.meds.scheduler import Scheduler
    from server.streaming.history import HistoryWriter
    from server.streaming.ingest import StreamService
    from server.streaming.live import LiveHub
    from server.transport.realtime import Realtime
    from server.vitals.blood_pressure import BloodPressure
    from server.vitals.events import Vitals
    from server.vitals.forecast import BPForecasts
    from server.vitals.model_registry import ModelRegistry
    from server.vitals.triage import Triage
    from signaling.calls import Calls


@dataclass
class Services:
    settings: Settings
    tokens: TokenService
    bus: ControlBus
    failures: FailureCounter
    auth: AuthService
    realtime: Realtime
    live: LiveHub
    notifications: Notifications
    vitals: Vitals
    writer: HistoryWriter
    streams: StreamService
    pubsub: PubSub
    presence: DevicePresence | None = None
    mqtt: MqttBridge | None = None
    broker_files: BrokerFiles | None = None
    mongo: AsyncMongoClient | None = None
    redis: Redis | None = None
    store: EmbeddedStore | None = None
    bp: BloodPressure | None = None
    contacts: Contacts | None = None
    calls: Calls | None = None
    alerts: Alerts | None = None
    push: PushDispatcher | None = None
    models: ModelRegistry | None = None
    forecasts: BPForecasts | None = None
    triage: Triage | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    medications: Medications | None = None
    scheduler: Scheduler | None = None
    medicine_box: MedicineBox | None = None
