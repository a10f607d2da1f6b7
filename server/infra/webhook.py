"""Signed webhooks: a JSON body with an HMAC-SHA256 signature over ``<timestamp>.<body>`` so the
receiver can check it came from this server and is fresh."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import httpx

SIGNATURE_HEADER = "X-HealthMate-Signature"
TIMESTAMP_HEADER = "X-HealthMate-Timestamp"
EVENT_HEADER = "X-HealthMate-Event"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def signed_request(secret: str, event: str, payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    timestamp = str(int(time.time()))
    return body, {"Content-Type": "application/json", TIMESTAMP_HEADER: timestamp, EVENT_HEADER: event,
                  SIGNATURE_HEADER: sign(secret, timestamp, body)}


class WebhookError(RuntimeError):
    def __init__(self, status: int) -> None:
        super().__init__(f"webhook answered {status}")
        self.status = status


async def post_signed(client: httpx.AsyncClient, url: str, secret: str, event: str,
                      payload: dict[str, Any], timeout_s: float = 10) -> None:
    """POST once; raises ``httpx.HTTPError`` on a transport error, ``WebhookError`` on an answer that is not
    2xx (a redirect included: the body would not follow it). The caller retries."""
    body, headers = signed_request(secret, event, payload)
    resp = await client.post(url, content=body, headers=headers, timeout=timeout_s)
    if resp.status_code >= 300:
        raise WebhookError(resp.status_code)
