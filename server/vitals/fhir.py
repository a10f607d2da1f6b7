"""FHIR R4 export of blood pressure history: a ``collection`` Bundle of vital-signs Observations
coded with LOINC (panel 85354-9, systolic 8480-6, diastolic 8462-4, heart rate 8867-4) and UCUM units."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
VITAL_SIGNS = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "vital-signs", "display": "Vital Signs"}]}]


def _code(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display}


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def bp_observations(base_url: str, patient_id: str, reading: dict[str, Any]) -> list[dict[str, Any]]:
    """One BP panel Observation, and a heart-rate Observation when a pulse was measured."""
    subject = {"reference": f"Patient/{patient_id}"}
    panel = {
        "resourceType": "Observation", "id": f"bp-{reading['id']}", "status": "final", "category": VITAL_SIGNS,
        "code": _code("85354-9", "Blood pressure panel with all children optional"), "subject": subject,
        "effectiveDateTime": reading["measured_at"],
        "component": [
            {"code": _code("8480-6", "Systolic blood pressure"), "valueQuantity": _quantity(reading["systolic"],
                                                                                            "mm[Hg]")},
            {"code": _code("8462-4", "Diastolic blood pressure"), "valueQuantity": _quantity(reading["diastolic"],
                                                                                             "mm[Hg]")},
        ],
        "interpretation": [{"text": reading["category"]}],
    }
    if reading.get("note"):
        panel["note"] = [{"text": reading["note"]}]
    out = [panel]
    if reading.get("pulse") is not None:
        out.append({
            "resourceType": "Observation", "id": f"hr-{reading['id']}", "status": "final", "category": VITAL_SIGNS,
            "code": _code("8867-4", "Heart rate"), "subject": subject, "effectiveDateTime": reading["measured_at"],
            "valueQuantity": _quantity(reading["pulse"], "/min"),
            "derivedFrom": [{"reference": f"Observation/bp-{reading['id']}"}],
        })
    return [{"fullUrl": f"{base_url}/Observation/{o['id']}", "resource": o} for o in out]


async def bp_bundle(base_url: str, patient_id: str, readings: AsyncIterator[dict[str, Any]], timestamp: str,
                    piece_bytes: int = 64 * 1024) -> AsyncIterator[bytes]:
    """The Bundle as JSON in pieces of about ``piece_bytes``, made as the readings come: a large export
    holds one piece in memory, not the whole document."""
    head = json.dumps({"resourceType": "Bundle", "type": "collection", "timestamp": timestamp})
    piece, size, sep = [head[:-1] + ', "entry": ['], 0, ""
    async for reading in readings:
        for entry in bp_observations(base_url, patient_id, reading):
            text = sep + json.dumps(entry)
            piece.append(text)
            size, sep = size + len(text), ","
        if size >= piece_bytes:
            yield "".join(piece).encode()
            piece, size = [], 0
    piece.append("]}")
    yield "".join(piece).encode()
