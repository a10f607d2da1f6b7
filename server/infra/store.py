"""Connection to MongoDB (or the embedded store) and Beanie initialisation."""

from __future__ import annotations

from beanie import Document, init_beanie
from pymongo import AsyncMongoClient

from devices.box_service import BoxEvent, MedicineBoxState
from devices.registry import Device
from server.alerts.alerts import Alert, AlertDelivery
from server.alerts.notifications import Notification
from server.alerts.push import PushToken
from server.care.contacts import MedicalContact
from server.care.documents import CORE_DOCUMENTS
from server.meds.medications import Medication, MedicationChange
from server.meds.scheduler import DoseEvent
from server.streaming.history import AnalysisChunk, Stream, WaveBucket
from server.vitals.blood_pressure import BPReading
from server.vitals.events import PatientThresholds, VitalEvent
from server.vitals.model_registry import ModelVersion, Prediction
from signaling.calls import CallLine, CallSession

DOCUMENTS: list[type[Document]] = [*CORE_DOCUMENTS, Device, Stream, WaveBucket, AnalysisChunk, VitalEvent,
                                   PatientThresholds, Notification, BPReading, MedicalContact, CallSession,
                                   CallLine, Alert, AlertDelivery, PushToken, ModelVersion, Prediction, Medication,
                                   MedicationChange, DoseEvent, MedicineBoxState, BoxEvent]


def make_client(url: str, **kwargs: object) -> AsyncMongoClient:
    """A client whose writes are acknowledged only once durable (majority + journal)."""
    opts: dict[str, object] = {
        "tz_aware": True,
        "w": "majority",
        "journal": True,
        "serverSelectionTimeoutMS": 5000,
        "appname": "healthmate",
    }
    opts.update(kwargs)
    return AsyncMongoClient(url, **opts)


async def init_documents(client: AsyncMongoClient, db_name: str) -> None:
    await init_beanie(database=client[db_name], document_models=DOCUMENTS)
