"""Helpers for the alert tests: sockets with a stable device id, and a crisis reading."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tests.helpers import Sock, User, connect

CRISIS = {"systolic": 195, "diastolic": 125, "pulse": 98}


async def device_sock(base_url: str, user: User, device_id: str | None = None) -> Sock:
    auth: dict[str, str] = {"token": user.access_token}
    if device_id is not None:
        auth["device_id"] = device_id
    return await connect(base_url, None, auth=auth)


def crisis(patient_id: str | None = None, **extra: Any) -> dict[str, Any]:
    body = {**CRISIS, "measured_at": datetime.now(UTC).isoformat(), **extra}
    if patient_id is not None:
        body["patient_id"] = patient_id
    return body
