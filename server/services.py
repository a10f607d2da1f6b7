"""What a running server holds: the shared objects handlers reach through the app."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pymongo import AsyncMongoClient
    from redis.asyncio import Redis

    from server.alerts import Alerts
    from server.auth import AuthService
    from server.blood_pressure import BloodPressure
    from server.bp_forecast import BPForecasts
    from server.bus import ControlBus
    from server.calls import CallService
    from server.config import Settings
    from server.contacts import Contacts
    from server.device_presence import DevicePresence
    from server.embedded_store import EmbeddedStore
    from server.live import LiveHub
    from server.medications import Medications
    from server.medicine_box import MedicineBox
    from server.model_registry import ModelRegistry
    from server.mqtt_bridge import MqttBridge
    from server.mqtt_broker import BrokerFiles
    from server.notifications import Notifications
    from server.push import PushDispatcher
    from server.ratelimit import FailureCounter
    from server.realtime import Realtime
    from server.scheduler import Scheduler
    from server.security import TokenService
    from server.streams import StreamService
    from server.triage import Triage
    from server.vitals import Vitals
    from server.waveform_store import HistoryWriter


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
    presence: DevicePresence | None = None
    mqtt: MqttBridge | None = None
    broker_files: BrokerFiles | None = None
    mongo: AsyncMongoClient | None = None
    redis: Redis | None = None
    store: EmbeddedStore | None = None
    bp: BloodPressure | None = None
    contacts: Contacts | None = None
    calls: CallService | None = None
    alerts: Alerts | None = None
    push: PushDispatcher | None = None
    models: ModelRegistry | None = None
    forecasts: BPForecasts | None = None
    triage: Triage | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    medications: Medications | None = None
    scheduler: Scheduler | None = None
    medicine_box: MedicineBox | None = None
