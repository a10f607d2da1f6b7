"""Push delivery to users with no connected device, through FCM HTTP v1, APNs, Web Push and a signed
webhook, each pointed at a local receiver started here that checks the exact request it would get
(headers, auth, payload); retries with backoff, dead tokens dropped, live delivery never blocked.
The receiver is operator-configured: the FCM/APNs/webhook endpoints, and for Web Push a trusted origin
(``webpush_trusted_origins``); a user's subscription anywhere else local is refused (tests/security/test_ssrf.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import http_ece
import jwt
import pytest
from aiohttp import web
from beanie import PydanticObjectId
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from server.alerts.documents import PushToken
from server.app import SERVER, create_app
from server.infra.embedded_store import EmbeddedStore
from server.infra.webhook import sign
from tests.alert_clients import crisis, device_sock
from tests.conftest import make_settings
from tests.helpers import Api

HOOK_SECRET = "push-hook-secret-" + "z" * 20


def pem(key: Any) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@dataclass
class Receiver:
    """Stands in for Google's OAuth and FCM, Apple's APNs, a browser push service and a webhook."""

    base: str = ""
    requests: list[tuple[str, Mapping[str, str], bytes]] = field(default_factory=list)
    fail: dict[str, list[int]] = field(default_factory=dict)  # path prefix -> statuses to answer first
    stall: asyncio.Event = field(default_factory=asyncio.Event)
    stalled_paths: set[str] = field(default_factory=set)

    def of(self, prefix: str) -> list[tuple[str, Mapping[str, str], bytes]]:
        return [r for r in self.requests if r[0].startswith(prefix)]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((request.path, request.headers.copy(), body))  # case-insensitive
        prefix = "/" + request.path.split("/")[1]
        if prefix in self.stalled_paths:
            await self.stall.wait()
        if self.fail.get(prefix):
            return web.Response(status=self.fail[prefix].pop(0), text='{"reason":"BadDeviceToken"}')
        if request.path == "/token":
            return web.json_response({"access_token": "ya29.test-bearer", "expires_in": 3600, "token_type": "Bearer"})
        return web.json_response({"name": "projects/p/messages/1"}, status=201 if prefix == "/wp" else 200)

    async def wait(self, prefix: str, count: int = 1) -> list[tuple[str, Mapping[str, str], bytes]]:
        for _ in range(100):
            if len(self.of(prefix)) >= count:
                break
            await asyncio.sleep(0.05)
        return self.of(prefix)


@dataclass
class Keys:
    account: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    apns: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    vapid: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    browser: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    auth: bytes = field(default_factory=lambda: os.urandom(16))


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    yield rec
    rec.stall.set()
    await runner.cleanup()


@pytest.fixture
async def push_api(store: EmbeddedStore, tmp_path: Path, aiohttp_server: Any,
                   receiver: Receiver) -> AsyncIterator[tuple[Api, Keys]]:
    keys = Keys()
    account = {"type": "service_account", "project_id": "health-mate-test", "private_key_id": "kid-1",
               "private_key": pem(keys.account), "client_email": "push@health-mate-test.iam.gserviceaccount.com",
               "token_uri": f"{receiver.base}/token"}
    settings = make_settings(
        store.url, tmp_path, fcm_service_account=json.dumps(account), fcm_endpoint=receiver.base,
        apns_team_id="TEAM123456", apns_key_id="KEY1234567", apns_private_key=pem(keys.apns),
        apns_topic="org.healthmate.app", apns_endpoint=receiver.base, vapid_private_key=pem(keys.vapid),
        vapid_subject="mailto:ops@healthmate.example", push_webhook_url=f"{receiver.base}/hook",
        webpush_trusted_origins=[receiver.base],  # the operator's own push service: subscriptions there are sent
        webhook_secret=HOOK_SECRET, push_retry_base_s=0.05)
    server = await aiohttp_server(create_app(settings))
    async with Api(str(server.make_url("")).rstrip("/"), server.app) as api:
        yield api, keys


def subscription(receiver: Receiver, keys: Keys) -> dict[str, Any]:
    point = keys.browser.public_key().public_bytes(serialization.Encoding.X962,
                                                   serialization.PublicFormat.UncompressedPoint)
    return {"endpoint": f"{receiver.base}/wp/sub-1", "keys": {"p256dh": b64(point), "auth": b64(keys.auth)},
            "expirationTime": None}


APNS_TOKEN = secrets.token_hex(32)


async def register_all(api: Api, user: Any, receiver: Receiver, keys: Keys) -> None:
    sock = await device_sock(api.base_url, user, "iphone-1")
    for body in ({"provider": "fcm", "token": "fcm-token:APA91b-xyz"}, {"provider": "apns", "token": APNS_TOKEN},
                 {"provider": "webpush", "subscription": subscription(receiver, keys)},
                 {"provider": "webhook", "token": "gateway-user-42"}):
        reply = await sock.ok("push:register", body)
        assert reply["enabled"] is True and reply["device_id"] == "iphone-1"
    await sock.close()


async def test_offline_caregiver_gets_the_alert_through_every_provider(push_api: tuple[Api, Keys],
                                                                       receiver: Receiver) -> None:
    api, keys = push_api
    patient, carer = await api.register("patient"), await api.register("caregiver", name="Maria")
    await api.link(patient, carer)
    await register_all(api, carer, receiver, keys)
    assert await PushToken.find(PushToken.user_id == PydanticObjectId(carer.id)).count() == 4
    await (await api.socket(patient)).ok("bp:add", crisis())

    # FCM HTTP v1: a service-account JWT exchanged for a bearer token, then messages:send.
    ((_, token_headers, token_body),) = await receiver.wait("/token")
    form = {k: v[0] for k, v in parse_qs(token_body.decode()).items()}
    assert token_headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    claims = jwt.decode(form["assertion"], keys.account.public_key(), algorithms=["RS256"],
                        audience=f"{receiver.base}/token")
    assert claims["iss"] == "push@health-mate-test.iam.gserviceaccount.com"
    assert claims["scope"] == "https://www.googleapis.com/auth/firebase.messaging"
    assert jwt.get_unverified_header(form["assertion"])["kid"] == "kid-1"
    ((path, headers, body),) = await receiver.wait("/v1")
    assert path == "/v1/projects/health-mate-test/messages:send"
    assert headers["Authorization"] == "Bearer ya29.test-bearer"
    message = json.loads(body)["message"]
    assert message["token"] == "fcm-token:APA91b-xyz" and message["notification"]["title"] == "Hypertensive crisis"
    assert message["android"] == {"priority": "HIGH"} and message["data"]["kind"] == "alert"
    assert all(isinstance(v, str) for v in message["data"].values()) and message["data"]["alert_id"]

    # APNs: /3/device/<token> with an ES256 provider token.
    ((path, headers, body),) = await receiver.wait("/3")
    assert path == f"/3/device/{APNS_TOKEN}"
    scheme, _, provider_token = headers["authorization"].partition(" ")
    assert scheme == "bearer" and jwt.get_unverified_header(provider_token) == {"alg": "ES256", "kid": "KEY1234567",
                                                                                 "typ": "JWT"}
    assert jwt.decode(provider_token, keys.apns.public_key(), algorithms=["ES256"])["iss"] == "TEAM123456"
    assert headers["apns-topic"] == "org.healthmate.app" and headers["apns-push-type"] == "alert"
    assert headers["apns-priority"] == "10"
    aps = json.loads(body)["aps"]
    assert aps["alert"]["title"] == "Hypertensive crisis" and aps["interruption-level"] == "time-sensitive"

    # Web Push: VAPID-signed, aes128gcm-encrypted to the browser's key; we decrypt it as the browser would.
    ((path, headers, body),) = await receiver.wait("/wp")
    assert path == "/wp/sub-1" and headers["Content-Encoding"] == "aes128gcm" and headers["Urgency"] == "high"
    assert int(headers["TTL"]) > 0
    vapid = dict(part.strip().split("=", 1) for part in headers["Authorization"].removeprefix("vapid ").split(","))
    vapid_claims = jwt.decode(vapid["t"], keys.vapid.public_key(), algorithms=["ES256"], audience=receiver.base)
    assert vapid_claims["sub"] == "mailto:ops@healthmate.example"
    plain = json.loads(http_ece.decrypt(body, private_key=keys.browser, auth_secret=keys.auth, version="aes128gcm"))
    assert plain["title"] == "Hypertensive crisis" and plain["urgency"] == "high"

    # The generic webhook: HMAC-signed.
    ((_, headers, body),) = await receiver.wait("/hook")
    assert headers["X-HealthMate-Signature"] == sign(HOOK_SECRET, headers["X-HealthMate-Timestamp"], body)
    sent = json.loads(body)
    assert sent["token"] == "gateway-user-42" and sent["notification"]["data"]["kind"] == "alert"


async def test_failures_retried_dead_tokens_dropped_and_live_delivery_never_blocked(
        push_api: tuple[Api, Keys], receiver: Receiver) -> None:
    api, keys = push_api
    offline, online = await api.register("caregiver"), await api.register("caregiver")
    await register_all(api, offline, receiver, keys)
    receiver.fail = {"/v1": [503, 500], "/3": [410]}
    receiver.stalled_paths = {"/hook"}
    sock = await device_sock(api.base_url, online, "online-1")
    await sock.ok("push:register", {"provider": "webhook", "token": "online-user-token"})
    assert api.app is not None
    notes = api.app[SERVER].notifications
    await notes.notify([offline.id, online.id], "reminder", "Take your pill", urgency="normal")
    # Live delivery happened while the webhook receiver is still holding its request.
    (live,) = await sock.events.wait("notification:new")
    assert live["title"] == "Take your pill" and not receiver.stall.is_set()
    # FCM answered 503 then 500: retried with backoff, delivered on the third attempt.
    assert len(await receiver.wait("/v1", 3)) == 3
    # APNs said the token is gone: it is dropped, not retried.
    await receiver.wait("/3")
    for _ in range(50):
        if await PushToken.find(PushToken.provider == "apns",
                                PushToken.user_id == PydanticObjectId(offline.id)).count() == 0:
            break
        await asyncio.sleep(0.05)
    tokens = {t.provider for t in await PushToken.find_all().to_list() if str(t.user_id) == offline.id}
    assert tokens == {"fcm", "webpush", "webhook"}
    receiver.stall.set()
    await receiver.wait("/hook")
    # The online user had nothing pushed.
    await asyncio.sleep(0.2)
    assert [json.loads(b)["token"] for _, _, b in receiver.of("/hook")] == ["gateway-user-42"]
    await sock.close()


async def test_registration_is_validated(push_api: tuple[Api, Keys]) -> None:
    api, _ = push_api
    user = await api.register("patient")
    sock = await device_sock(api.base_url, user, "tab")
    for bad in ({"provider": "sms", "token": "12345678"}, {"provider": "fcm"}, {"provider": "apns", "token": "zz" * 20},
                {"provider": "webpush", "token": "abcdefgh"}, {"provider": "fcm", "token": "a b c d e f"},
                {"provider": "webpush",
                 "subscription": {"endpoint": "not a url", "keys": {"p256dh": "x", "auth": "y"}}},
                {"provider": "fcm", "token": "x" * 5000}):
        reply = await sock.call("push:register", bad)
        assert reply["ok"] is False and reply["error"]["code"] == "invalid_payload", bad
    await sock.ok("push:register", {"provider": "fcm", "token": "first-token"})
    await sock.ok("push:register", {"provider": "fcm", "token": "second-token"})  # replaces, per device
    assert [t.token for t in await PushToken.find(PushToken.device_id == "tab").to_list()] == ["second-token"]
    assert (await sock.ok("push:unregister", {}))["removed"] == 1
    await sock.close()
