"""Helpers for the alert tests: sockets with a stable device id, and a crisis reading."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import socketio

from tests.helpers import Events, Sock, User

CRISIS = {"systolic": 195, "diastolic": 125, "pulse": 98}


async def device_sock(base_url: str, user: User, device_id: str | None = None) -> Sock:
    client = socketio.AsyncClient(reconnection=False)
    events = Events()

    @client.on("*")
    async def catch_all(event: str, data: Any = None) -> None:
        await events.add(event, data)

    auth: dict[str, str] = {"token": user.access_token}
    if device_id is not None:
        auth["device_id"] = device_id
    await client.connect(base_url, auth=auth, transports=["websocket"], wait_timeout=10)
    return Sock(client, events)


def crisis(patient_id: str | None = None, **extra: Any) -> dict[str, Any]:
    body = {**CRISIS, "measured_at": datetime.now(UTC).isoformat(), **extra}
    if patient_id is not None:
        body["patient_id"] = patient_id
    return body
