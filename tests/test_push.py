"""Push through the durable outbox to FCM HTTP v1 (with its OAuth exchange), APNs (HTTP/2), Web Push (decrypted
here with the subscription's keys) and a signed webhook, each a local receiver (tests/push_receivers.py) that
checks the exact request it would get: how urgent each kind of push is and its collapse id, VoIP rings and their
cancels, retries with backoff, dead tokens, deadlines, the operator's statistics, and the outbox surviving a
SIGKILL with pushes in flight. The receivers are operator-configured endpoints; for Web Push a trusted origin
(``webpush_trusted_origins``); a user's subscription anywhere else local is refused (tests/security/test_ssrf.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import http_ece
import jwt
import pytest
from beanie import PydanticObjectId
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from prometheus_client import REGISTRY
from pymongo import AsyncMongoClient

from server.alerts.documents import PushEntry, PushToken
from server.alerts.push_providers import CRITICAL_SOUND, collapse_key
from server.app import SERVER, create_app
from server.infra.embedded_store import EmbeddedStore, free_port
from server.infra.webhook import sign
from tests.alert_clients import crisis, device_sock
from tests.conftest import make_settings
from tests.helpers import Api, ServerProcess, User, process_env
from tests.push_receivers import Receiver, Req, receivers

HOOK_SECRET = "push-hook-secret-" + "z" * 20
BUNDLE = "org.healthmate.app"


def pem(key: Any) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@dataclass
class Keys:
    account: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    apns: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    vapid: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    browser: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    auth: bytes = field(default_factory=lambda: os.urandom(16))


def provider_settings(rec: Receiver, keys: Keys) -> dict[str, Any]:
    """Every provider pointed at the receivers (as settings names)."""
    account = {"type": "service_account", "project_id": "health-mate-test", "private_key_id": "kid-1",
               "private_key": pem(keys.account), "client_email": "push@health-mate-test.iam.gserviceaccount.com",
               "token_uri": f"{rec.base}/token"}
    return dict(fcm_service_account=json.dumps(account), fcm_endpoint=rec.base, apns_team_id="TEAM123456",
                apns_key_id="KEY1234567", apns_private_key=pem(keys.apns), apns_topic=BUNDLE,
                apns_endpoint=rec.apns_base, vapid_private_key=pem(keys.vapid),
                vapid_subject="mailto:ops@healthmate.example", push_webhook_url=f"{rec.base}/hook",
                webpush_trusted_origins=[rec.base])  # the operator's own push service: subscriptions there are sent


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with receivers() as rec:
        yield rec


@pytest.fixture
async def push_api(store: EmbeddedStore, tmp_path: Path, aiohttp_server: Any,
                   receiver: Receiver) -> AsyncIterator[tuple[Api, Keys]]:
    keys = Keys()
    settings = make_settings(store.url, tmp_path, **provider_settings(receiver, keys), webhook_secret=HOOK_SECRET,
                             push_retry_base_s=0.05, push_deadline_s=2)
    server = await aiohttp_server(create_app(settings))
    async with Api.of(server) as api:
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


def apns_of(req: Req) -> dict[str, Any]:
    assert req.http_version == "2", "APNs is HTTP/2 only"
    return json.loads(req.body)


def fcm_of(req: Req) -> dict[str, Any]:
    return json.loads(req.body)["message"]


def counted(provider: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("healthmate_push_total", {"provider": provider, "outcome": outcome}) or 0.0


async def test_offline_caregiver_gets_the_alert_through_every_provider_as_critical(
        push_api: tuple[Api, Keys], receiver: Receiver) -> None:
    api, keys = push_api
    patient, carer = await api.register("patient"), await api.register("caregiver", name="Maria")
    await api.link(patient, carer)
    await register_all(api, carer, receiver, keys)
    assert await PushToken.find(PushToken.user_id == PydanticObjectId(carer.id)).count() == 4
    await (await api.socket(patient)).ok("bp:add", crisis())

    # FCM HTTP v1: a service-account JWT exchanged for a bearer token, then messages:send.
    (token_req,) = await receiver.wait("/token")
    form = {k: v[0] for k, v in parse_qs(token_req.body.decode()).items()}
    assert token_req.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    claims = jwt.decode(form["assertion"], keys.account.public_key(), algorithms=["RS256"],
                        audience=f"{receiver.base}/token")
    assert claims["iss"] == "push@health-mate-test.iam.gserviceaccount.com"
    assert claims["scope"] == "https://www.googleapis.com/auth/firebase.messaging"
    assert jwt.get_unverified_header(form["assertion"])["kid"] == "kid-1"
    (req,) = await receiver.wait("/v1")
    assert req.path == "/v1/projects/health-mate-test/messages:send"
    assert req.headers["Authorization"] == "Bearer ya29.test-bearer"
    message = fcm_of(req)
    alert_id = message["data"]["alert_id"]
    assert message["token"] == "fcm-token:APA91b-xyz" and message["notification"]["title"] == "Hypertensive crisis"
    assert all(isinstance(v, str) for v in message["data"].values()) and message["data"]["kind"] == "alert"
    android = message["android"]  # Android: high priority on the dedicated channel, collapsing by the alert
    assert android["priority"] == "HIGH" and android["notification"] == {"channel_id": "healthmate_critical"}
    assert android["collapse_key"] == alert_id and int(android["ttl"].removesuffix("s")) > 3600
    apns_block = message["apns"]  # an iPhone on FCM: the same as APNs itself below
    assert apns_block["headers"]["apns-priority"] == "10" and apns_block["headers"]["apns-collapse-id"] == alert_id
    assert apns_block["payload"]["aps"] == {"interruption-level": "critical", "sound": CRITICAL_SOUND}

    # APNs over HTTP/2: /3/device/<token> with an ES256 provider token; a critical alert with its sound.
    (req,) = await receiver.wait("/3")
    assert req.path == f"/3/device/{APNS_TOKEN}"
    scheme, _, provider_token = req.headers["authorization"].partition(" ")
    assert scheme == "bearer" and jwt.get_unverified_header(provider_token) == {"alg": "ES256", "kid": "KEY1234567",
                                                                                 "typ": "JWT"}
    assert jwt.decode(provider_token, keys.apns.public_key(), algorithms=["ES256"])["iss"] == "TEAM123456"
    assert req.headers["apns-topic"] == BUNDLE and req.headers["apns-push-type"] == "alert"
    assert req.headers["apns-priority"] == "10" and req.headers["apns-collapse-id"] == alert_id
    assert int(req.headers["apns-expiration"]) > time.time() + 3600  # an alert is worth sending until answered
    aps = apns_of(req)["aps"]
    assert aps["alert"]["title"] == "Hypertensive crisis"
    assert aps["interruption-level"] == "critical" and aps["sound"] == {"critical": 1, "name": "default", "volume": 1.0}

    # Web Push: VAPID-signed, aes128gcm-encrypted to the browser's key; we decrypt it as the browser would.
    (req,) = await receiver.wait("/wp")
    assert req.path == "/wp/sub-1" and req.headers["Content-Encoding"] == "aes128gcm"
    assert req.headers["Urgency"] == "high" and int(req.headers["TTL"]) > 3600 and req.headers["Topic"] == alert_id
    vapid = dict(part.strip().split("=", 1) for part in req.headers["Authorization"].removeprefix("vapid ").split(","))
    vapid_claims = jwt.decode(vapid["t"], keys.vapid.public_key(), algorithms=["ES256"], audience=receiver.base)
    assert vapid_claims["sub"] == "mailto:ops@healthmate.example"
    plain = json.loads(http_ece.decrypt(req.body, private_key=keys.browser, auth_secret=keys.auth, version="aes128gcm"))
    assert plain["title"] == "Hypertensive crisis" and plain["level"] == "critical" and plain["collapse_id"] == alert_id

    # The generic webhook: HMAC-signed.
    (req,) = await receiver.wait("/hook")
    assert req.headers["X-HealthMate-Signature"] == sign(HOOK_SECRET, req.headers["X-HealthMate-Timestamp"], req.body)
    sent = json.loads(req.body)
    assert sent["token"] == "gateway-user-42" and sent["notification"]["data"]["kind"] == "alert"
    assert api.app is not None
    await api.app[SERVER].push.outbox.idle()  # each delivered once, then removed from the outbox
    assert len(receiver.requests) == 5


async def test_reminders_are_time_sensitive_the_rest_normal_each_collapsing_by_its_id(
        push_api: tuple[Api, Keys], receiver: Receiver) -> None:
    api, keys = push_api
    patient = await api.register("patient")
    await register_all(api, patient, receiver, keys)
    assert api.app is not None
    notes = api.app[SERVER].notifications
    dose_id = str(PydanticObjectId())
    await notes.notify([patient.id], "reminder", "Time for Metformin", data={"dose_id": dose_id})
    (link,) = await notes.notify([patient.id], "link_request", "Someone asked to join your care team", urgency="low")
    for prefix in ("/v1", "/3", "/wp"):
        await receiver.wait(prefix, 2, accepted=True)
    by_kind = {fcm_of(r)["data"]["kind"]: r for r in receiver.of("/v1")}
    apns = {apns_of(r)["kind"]: r for r in receiver.of("/3")}
    web = {json.loads(http_ece.decrypt(r.body, private_key=keys.browser, auth_secret=keys.auth,
                                       version="aes128gcm"))["data"]["kind"]: r for r in receiver.of("/wp")}
    # A dose reminder: breaks through Focus, high priority on the reminders channel, collapsing by the dose.
    reminder = fcm_of(by_kind["reminder"])["android"]
    assert reminder["priority"] == "HIGH" and reminder["notification"]["channel_id"] == "healthmate_reminders"
    assert reminder["collapse_key"] == dose_id
    assert apns["reminder"].headers["apns-priority"] == "10" and apns["reminder"].headers["apns-collapse-id"] == dose_id
    assert apns_of(apns["reminder"])["aps"]["interruption-level"] == "time-sensitive"
    assert apns_of(apns["reminder"])["aps"]["sound"] == "default"
    assert web["reminder"].headers["Urgency"] == "high" and web["reminder"].headers["Topic"] == dose_id
    # Anything else: normal priority on the default channel, collapsing by the notification.
    other = fcm_of(by_kind["link_request"])["android"]
    assert other["priority"] == "NORMAL" and other["notification"]["channel_id"] == "healthmate_default"
    assert other["collapse_key"] == str(link.id)
    assert apns["link_request"].headers["apns-priority"] == "5"
    assert apns["link_request"].headers["apns-collapse-id"] == str(link.id)
    assert apns_of(apns["link_request"])["aps"]["interruption-level"] == "passive"  # urgency low
    assert web["link_request"].headers["Urgency"] == "low" and web["link_request"].headers["Topic"] == str(link.id)
    # A collapse id too long (or not URL-safe) for a Web Push Topic becomes a fixed 32-character digest of it.
    long_id = "call:" + "x" * 60
    assert collapse_key(long_id, 32) == collapse_key(long_id, 32) != collapse_key(long_id + "y", 32)
    assert len(collapse_key(long_id, 32)) == 32 and collapse_key(dose_id, 32) == dose_id


async def test_failures_retried_dead_tokens_dropped_deadlines_kept_and_counted(
        push_api: tuple[Api, Keys], receiver: Receiver) -> None:
    api, keys = push_api
    offline, online = await api.register("caregiver"), await api.register("caregiver")
    await register_all(api, offline, receiver, keys)
    receiver.fail = {"/v1": [503, 500], "/3": [410], "/hook": [503] * 100}
    receiver.stalled_paths = {"/wp"}
    sock = await device_sock(api.base_url, online, "online-1")
    await sock.ok("push:register", {"provider": "webhook", "token": "online-user-token"})
    assert api.app is not None
    before = {(p, o): counted(p, o) for p in ("fcm", "apns", "webhook", "webpush")
              for o in ("sent", "retried", "dead_token", "gave_up")}
    notes = api.app[SERVER].notifications
    await notes.notify([offline.id, online.id], "reminder", "Take your pill", urgency="normal")
    # Live delivery happened while the Web Push receiver still holds its request.
    (live,) = await sock.events.wait("notification:new")
    assert live["title"] == "Take your pill" and not receiver.stall.is_set()
    # Written to the store before the attempt, and there while it is in flight.
    await receiver.wait("/wp")
    assert "webpush" in {e.provider for e in await PushEntry.find(
        PushEntry.user_id == PydanticObjectId(offline.id)).to_list()}
    receiver.stall.set()
    outbox = api.app[SERVER].push.outbox
    await outbox.idle()
    # FCM answered 503 then 500: retried with backoff, delivered on the third attempt (one OAuth exchange).
    assert len(receiver.of("/v1")) == 3 and len(receiver.accepted_of("/v1")) == 1
    # APNs said the token is gone: the registration is dropped, the push not retried.
    assert len(receiver.of("/3")) == 1
    tokens = {t.provider for t in await PushToken.find_all().to_list() if str(t.user_id) == offline.id}
    assert tokens == {"fcm", "webpush", "webhook"}
    # The webhook kept failing: retried until the deadline (push_deadline_s = 2), then given up.
    assert len(receiver.of("/hook")) >= 3 and not receiver.accepted_of("/hook")
    # The online user had nothing pushed.
    assert {json.loads(r.body)["token"] for r in receiver.of("/hook")} == {"gateway-user-42"}
    after = {key: counted(*key) - value for key, value in before.items()}
    assert after[("fcm", "retried")] == 2 and after[("fcm", "sent")] == 1 and after[("apns", "dead_token")] == 1
    # Its last failure was given up at once (the next try would fall past the deadline), or retried and given up
    # unsent when it fell due past the deadline: both are counted once as given up.
    hooks = len(receiver.of("/hook"))
    assert after[("webhook", "gave_up")] == 1 and after[("webhook", "retried")] in (hooks - 1, hooks)
    assert after[("webpush", "sent")] == 1
    # The operator's view: an organisation's administrator only.
    status, body = await api.request("GET", "/api/admin/push-stats", offline)
    assert status == 403 and body["error"]["code"] == "forbidden"
    admin, _ = await api.org_admin()
    status, stats = await api.request("GET", "/api/admin/push-stats", admin)
    assert status == 200, stats
    assert stats["outbox"]["waiting"] == 0 and stats["history"]["outcomes"]["apns"]["dead_token"] >= 1
    assert stats["history"]["outcomes"]["webhook"]["gave_up"] >= 1 and stats["history"]["sent_last_hour"] >= 2
    await sock.close()


async def test_an_alert_push_retries_until_the_alert_is_acknowledged(push_api: tuple[Api, Keys],
                                                                      receiver: Receiver) -> None:
    api, _ = push_api
    patient, carer = await api.register("patient"), await api.register("caregiver")
    await api.link(patient, carer)
    sock = await device_sock(api.base_url, carer, "pixel-1")
    await sock.ok("push:register", {"provider": "fcm", "token": "fcm-token:pixel-1"})
    await sock.close()
    receiver.fail = {"/v1": [503] * 1000}  # FCM is down
    obsolete = counted("fcm", "obsolete")
    alert = await (await api.socket(patient)).ok("bp:add", crisis())
    await receiver.wait("/v1", 3)  # retried past the 2 s deadline of other pushes: an alert's is until answered
    (entry,) = await PushEntry.find(PushEntry.user_id == PydanticObjectId(carer.id)).to_list()
    assert entry.alert_id is not None and entry.attempt >= 2
    carer_sock = await device_sock(api.base_url, carer, "pixel-1")
    await carer_sock.ok("alert:ack", {"alert_id": str(entry.alert_id)})
    await carer_sock.close()
    assert api.app is not None
    await api.app[SERVER].push.outbox.idle()  # dropped at its next attempt, not sent
    assert counted("fcm", "obsolete") == obsolete + 1 and not receiver.accepted_of("/v1") and alert


async def test_voip_ring_and_cancel(push_api: tuple[Api, Keys], receiver: Receiver) -> None:
    api, _ = push_api
    callee = await api.register("caregiver")
    voip_token, alert_token = secrets.token_hex(32), secrets.token_hex(32)
    iphone = await device_sock(api.base_url, callee, "iphone")
    await iphone.ok("push:register", {"provider": "apns-voip", "token": voip_token})
    await iphone.ok("push:register", {"provider": "apns", "token": alert_token})
    pixel = await device_sock(api.base_url, callee, "pixel")
    await pixel.ok("push:register", {"provider": "fcm", "token": "fcm-token:pixel"})
    bad = await iphone.call("push:register", {"provider": "apns-voip", "token": "not-hex-token"})
    assert bad["error"]["code"] == "invalid_payload"
    await iphone.close()
    await pixel.close()
    assert api.app is not None
    push = api.app[SERVER].push
    call_id = str(PydanticObjectId())
    call = {"id": call_id, "media": "video", "patient_id": str(PydanticObjectId()),
            "caller": {"id": str(PydanticObjectId()), "name": "Dr Rivera"}}
    await push.ring(callee.id, call)
    await receiver.wait("/3", accepted=True)
    await receiver.wait("/v1", accepted=True)
    # iOS: a PushKit push to the VoIP token only (never the alert token), to the <bundle>.voip topic.
    (ring,) = receiver.accepted_of("/3")
    assert ring.path == f"/3/device/{voip_token}" and ring.headers["apns-push-type"] == "voip"
    assert ring.headers["apns-topic"] == f"{BUNDLE}.voip" and ring.headers["apns-priority"] == "10"
    assert ring.headers["apns-collapse-id"] == call_id
    assert apns_of(ring) == {"kind": "call", "call_id": call_id, "caller_id": call["caller"]["id"],
                             "caller_name": "Dr Rivera", "media": "video", "patient_id": call["patient_id"]}
    # Android: a data-only FCM message at high priority (the app shows its own ConnectionService UI).
    (fcm_ring,) = receiver.accepted_of("/v1")
    message = fcm_of(fcm_ring)
    assert "notification" not in message and "apns" not in message and message["token"] == "fcm-token:pixel"
    assert message["android"]["priority"] == "HIGH" and message["android"]["collapse_key"] == call_id
    assert message["data"]["kind"] == "call" and message["data"]["caller_name"] == "Dr Rivera"
    # Answered elsewhere: a cancel to every device rung, replacing the ring where the OS allows.
    await push.cancel_ring(callee.id, call_id, "answered_elsewhere")
    await push.outbox.idle()
    cancel = receiver.accepted_of("/3")[1]
    assert cancel.path == ring.path and cancel.headers["apns-push-type"] == "voip"
    assert cancel.headers["apns-collapse-id"] == call_id
    assert apns_of(cancel) == {"kind": "call_cancel", "call_id": call_id, "reason": "answered_elsewhere"}
    fcm_cancel = fcm_of(receiver.accepted_of("/v1")[1])
    assert fcm_cancel["data"] == {"kind": "call_cancel", "call_id": call_id, "reason": "answered_elsewhere"}
    assert fcm_cancel["android"]["collapse_key"] == call_id and "notification" not in fcm_cancel
    assert await PushEntry.find(PushEntry.call_id == call_id).count() == 0  # the rings are forgotten
    await push.cancel_ring(callee.id, call_id, "missed")  # nothing rung any more: nothing sent
    await asyncio.sleep(0.2)
    assert len(receiver.requests) == 5  # OAuth once, two rings, two cancels


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


# --- the outbox across processes -------------------------------------------------------------------------------

PHONES = 6
HELD = 4  # of them, the receiver holds the pushes to these until the process sending them is dead


async def alert_in_flight(api: Api, patient: User, receiver: Receiver, outbox: Any, tokens: list[str],
                          server: ServerProcess) -> tuple[str, list[dict[str, Any]]]:
    """A crisis alert pushed to every phone, the receiver holding those to the first HELD phones: once every push
    has arrived at the receiver, the alert's id and the entries still in the outbox (attempted, not removed)."""
    receiver.held, before = set(tokens[:HELD]), len(receiver.requests)
    receiver.released.clear()
    await (await api.socket(patient)).ok("bp:add", crisis())
    arrived: set[str] = set()
    entries: list[dict[str, Any]] = []
    for _ in range(400):
        arrived = {r.path for r in receiver.requests[before:]}
        entries = await outbox.find({}).to_list(None)
        if len(arrived) == PHONES and len(entries) >= HELD and all(e["attempt"] >= 1 for e in entries):
            return str(entries[0]["alert_id"]), entries
        await asyncio.sleep(0.05)
    raise AssertionError(f"pushes not in flight: {arrived}, {entries}\n" + "".join(server.output[-30:]))


def owned_by(entry: dict[str, Any], server: ServerProcess) -> bool:
    """The entry is leased by that process (the lease owner is ``host:pid:random``)."""
    assert server.proc is not None
    return (entry["lease_owner"] or "::").split(":")[1] == str(server.proc.pid)


async def until_empty(outbox: Any) -> None:
    for _ in range(600):
        if await outbox.count_documents({}) == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the outbox did not empty")


def delivered(receiver: Receiver, alert_id: str, tokens: list[str], left: list[dict[str, Any]]) -> None:
    """Every phone's push accepted by the provider; exactly once for each whose entry had been removed before the
    kill (the provider's answer seen); the others (in flight at the kill) at least once, always with the alert's
    collapse id. The held ones were among those left, and arrived more than once."""
    accepted = Counter(r.path for r in receiver.accepted if r.headers["apns-collapse-id"] == alert_id)
    unconfirmed = {e["target"] for e in left}
    assert set(tokens[:HELD]) <= unconfirmed
    for token in tokens:
        assert accepted[f"/3/device/{token}"] >= 1 if token in unconfirmed else accepted[f"/3/device/{token}"] == 1, \
            (token, accepted)
    assert len([r for r in receiver.requests if r.headers["apns-collapse-id"] == alert_id]) >= PHONES + HELD


async def test_the_outbox_survives_sigkill_by_restart_and_by_takeover(store: EmbeddedStore, redis_url: str,
                                                                      tmp_path: Path, receiver: Receiver) -> None:
    """Asserted: every push still in the outbox when its process was SIGKILLed (the held ones: in flight, no answer)
    is sent after the restart, or by the other process once the lease ran out, and accepted; one whose entry had
    been removed (its provider's 200 seen) is never sent again, so the provider accepts it exactly once; a push
    accepted more than once (the provider answered, the process died before it saw the answer or removed the
    entry) carries the same collapse id every time, so the phone shows it once."""
    keys = Keys()
    env = process_env(store.url, tmp_path, redis_url, apns_team_id="TEAM123456", apns_key_id="KEY1234567",
                      apns_private_key=pem(keys.apns), apns_topic=BUNDLE, apns_endpoint=receiver.apns_base,
                      push_timeout_s=3, push_lease_s=4, push_poll_s=0.2, push_retry_base_s=0.2, push_workers=8)
    tokens = [secrets.token_hex(32) for _ in range(PHONES)]
    mongo: AsyncMongoClient = AsyncMongoClient(store.url, tz_aware=True)
    outbox = mongo[env["HEALTHMATE_MONGODB_DB"]]["push_outbox"]
    first = await ServerProcess(env, free_port()).start()
    procs = [first]
    try:
        async with Api(first.url) as api:
            patient, patient2, carer = (await api.register("patient"), await api.register("patient"),
                                        await api.register("caregiver"))
            await api.link(patient, carer)
            await api.link(patient2, carer)  # an open alert is not raised again: phase 2 is another patient's
            for n, token in enumerate(tokens):
                sock = await device_sock(api.base_url, carer, f"phone-{n}")
                await sock.ok("push:register", {"provider": "apns", "token": token})
                await sock.close()
            # 1. SIGKILL with pushes in flight, then a restart.
            alert_id, entries = await alert_in_flight(api, patient, receiver, outbox, tokens, first)
            assert any(owned_by(e, first) for e in entries), entries  # type: ignore[union-attr]
            await first.stop(signal.SIGKILL)
            receiver.held = set()
            receiver.released.set()
            procs.append(second := await ServerProcess(env, free_port()).start())
            await receiver.wait("/3", PHONES, timeout=60, accepted=True)
            await until_empty(outbox)
            delivered(receiver, alert_id, tokens, entries)
        # 2. Two processes; the one sending is SIGKILLed; the other takes over once the lease has run out.
        procs.append(third := await ServerProcess(env, free_port()).start())
        async with Api(second.url) as api:
            accepted_before = len(receiver.accepted)
            alert_id, entries = await alert_in_flight(api, patient2, receiver, outbox, tokens, second)
            assert any(owned_by(e, second) for e in entries), entries
            await second.stop(signal.SIGKILL)
            receiver.held = set()
            receiver.released.set()
            await receiver.wait("/3", accepted_before + PHONES, timeout=60, accepted=True)
            await until_empty(outbox)
            delivered(receiver, alert_id, tokens, entries)
            assert third.proc is not None and third.proc.poll() is None
    finally:
        await asyncio.gather(*(p.stop() for p in procs))
        await mongo.close()
