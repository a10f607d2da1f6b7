"""Connection to MongoDB (or the embedded store) and Beanie initialisation."""

from __future__ import annotations

from beanie import Document, init_beanie
from pymongo import AsyncMongoClient

from server.alerts import Alert, AlertDelivery
from server.blood_pressure import BPReading
from server.calls import CallLine, CallSession
from server.contacts import MedicalContact
from server.device_registry import Device
from server.medications import Medication, MedicationChange
from server.medicine_box import BoxEvent, MedicineBoxState
from server.model_registry import ModelVersion, Prediction
from server.models import CORE_DOCUMENTS
from server.notifications import Notification
from server.push import PushToken
from server.scheduler import DoseEvent
from server.vitals import PatientThresholds, VitalEvent
from server.waveform_store import AnalysisChunk, Stream, WaveBucket

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
