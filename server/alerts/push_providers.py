"""Push delivery providers behind one interface: ``send(target, message)`` raises ``PushError``
(``retryable`` or ``gone``, the latter meaning the device token is dead and is dropped).

- FCM HTTP v1: a service-account JWT (RS256) is exchanged for an OAuth2 bearer token (cached), then
  ``POST {endpoint}/v1/projects/<project>/messages:send``.
- APNs: HTTP/2 only (``httpx``) ``POST {endpoint}/3/device/<token>`` with a provider token (ES256 JWT from
  the .p8 key, renewed every 50 minutes); a call's ring or cancel as a PushKit (``voip``) push.
- Web Push: the browser's subscription, aes128gcm-encrypted by ``pywebpush`` and VAPID-signed, posted to its
  endpoint (a URL the user gave) over ``server.infra.safe_url.PublicClient``: https, public addresses only.
- Webhook: an HMAC-signed POST to one configured URL (``server.infra.webhook``).

Each message says how urgent it is (``level``: the interruption level, priority and Android channel) and its
collapse id (``apns-collapse-id``, FCM's ``collapse_key``, Web Push's ``Topic``). Every operator endpoint is a
setting, so tests point the providers at a local receiver; Web Push
subscriptions reach one only at an origin the operator trusts (``HEALTHMATE_WEBPUSH_TRUSTED_ORIGINS``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import jwt
from py_vapid import Vapid, VapidException
from pywebpush import WebPusher, WebPushException

from server.core.config import Settings
from server.infra.safe_url import PublicClient, UnsafeURL, trusted_origins
from server.infra.webhook import WebhookError, post_signed

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
TIMEOUT_S = 10.0


class PushError(Exception):
    def __init__(self, message: str, *, retryable: bool = False, gone: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.gone = gone


class RefusedTarget(PushError):
    """A target the server will not send to (a Web Push endpoint that is not https or not public): dropped
    like a dead token, and logged as a warning, since it may be an attempt at the server's own network."""

    def __init__(self, message: str) -> None:
        super().__init__(message, gone=True)


def status_error(provider: str, status: int, detail: str = "", gone: bool = False) -> PushError:
    return PushError(f"{provider} answered {status} {detail[:200]}".strip(), gone=gone,
                     retryable=status in (401, 403, 408, 429) or status >= 500)


# How the OS is asked to show a push (``push.level_of`` decides it from the notification): ``critical`` breaks
# through Do Not Disturb and the mute switch on iOS (the app needs Apple's critical-alerts entitlement) and goes
# to Android's critical channel; ``time_sensitive`` breaks through Focus (reminders, urgent notifications).
LEVELS = ("critical", "time_sensitive", "normal", "low")
CRITICAL_SOUND = {"critical": 1, "name": "default", "volume": 1.0}
INTERRUPTION = {"critical": "critical", "time_sensitive": "time-sensitive", "normal": "active", "low": "passive"}
WEBPUSH_URGENCY = {"critical": "high", "time_sensitive": "high", "normal": "normal", "low": "low"}
DEFAULT_TTL_S = 3600
_SAFE = re.compile(r"[A-Za-z0-9_-]+")


def collapse_key(value: str, limit: int) -> str:
    """``value`` itself if it is at most ``limit`` URL-safe characters (an alert, dose, notification or call id
    is), else the start of its SHA-256 in URL-safe base64: the same value always gives the same key."""
    if len(value) <= limit and _SAFE.fullmatch(value):
        return value
    return base64.urlsafe_b64encode(hashlib.sha256(value.encode()).digest()).decode().rstrip("=")[:limit]


@dataclass
class PushMessage:
    title: str
    body: str
    urgency: str = "normal"  # the notification's: low | normal | high | critical
    data: dict[str, str] = field(default_factory=dict)  # string values (FCM requires it)
    level: str = "normal"  # one of LEVELS
    collapse_id: str = ""  # the alert, dose, notification or call id: a retry replaces, never adds
    voip: bool = False  # a call's ring or cancel: PushKit on iOS, a data-only FCM message on Android
    expires_at: float = 0.0  # epoch seconds after which it is worth nothing (0: not said)

    @property
    def urgent(self) -> bool:
        return self.level in ("critical", "time_sensitive")

    @property
    def channel(self) -> str:
        """The Android notification channel (the app creates these four)."""
        if self.level == "critical":
            return "healthmate_critical"
        if self.data.get("kind") == "reminder":
            return "healthmate_reminders"
        return "healthmate_urgent" if self.urgent else "healthmate_default"

    def ttl_s(self) -> int:
        return max(0, int(self.expires_at - time.time())) if self.expires_at else DEFAULT_TTL_S

    def aps(self) -> dict[str, Any]:
        """APNs' ``aps`` of a visible push: the interruption level, and the critical sound for a critical one."""
        return {"sound": CRITICAL_SOUND if self.level == "critical" else "default",
                "interruption-level": INTERRUPTION.get(self.level, "active")}

    def apns_headers(self) -> dict[str, str]:
        """Priority, collapse id and expiry, for APNs itself and for FCM's ``apns`` block."""
        headers = {"apns-priority": "10" if self.urgent or self.voip else "5"}
        if self.collapse_id:
            headers["apns-collapse-id"] = collapse_key(self.collapse_id, 64)
        if self.expires_at:
            headers["apns-expiration"] = str(int(self.expires_at))
        return headers

    def payload(self) -> dict[str, Any]:
        return {"title": self.title, "body": self.body, "urgency": self.urgency, "level": self.level,
                "collapse_id": self.collapse_id, "data": self.data}


class Provider(Protocol):
    name: str

    async def send(self, target: Any, message: PushMessage) -> None: ...

    async def close(self) -> None: ...


def _secret_text(value: str) -> str:
    """A secret given inline or as a path to a file holding it."""
    if not value.lstrip().startswith(("{", "-----")) and len(value) < 4096 and Path(value).is_file():
        return Path(value).read_text()
    return value


class FCMProvider:
    name = "fcm"

    def __init__(self, service_account: dict[str, Any], endpoint: str, token_uri: str | None = None,
                 timeout_s: float = TIMEOUT_S) -> None:
        self.account = service_account
        self.project = service_account["project_id"]
        self.endpoint = endpoint.rstrip("/")
        self.token_uri = token_uri or service_account.get("token_uri", "https://oauth2.googleapis.com/token")
        self._bearer: tuple[str, float] | None = None
        self._http = httpx.AsyncClient(timeout=timeout_s, trust_env=False)

    def assertion(self) -> str:
        now = int(time.time())
        claims = {"iss": self.account["client_email"], "scope": FCM_SCOPE, "aud": self.token_uri, "iat": now,
                  "exp": now + 3600}
        return jwt.encode(claims, self.account["private_key"], algorithm="RS256",
                          headers={"kid": self.account.get("private_key_id", "")})

    async def bearer(self) -> str:
        if self._bearer and self._bearer[1] > time.time():
            return self._bearer[0]
        form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": self.assertion()}
        resp = await self._post(self.token_uri, data=form)
        if resp.status_code != 200:
            raise status_error("fcm oauth", resp.status_code, resp.text)
        body = resp.json()
        self._bearer = (body["access_token"], time.time() + int(body.get("expires_in", 3600)) - 60)
        return self._bearer[0]

    async def send(self, target: str, message: PushMessage) -> None:
        """A visible notification on its Android channel (and FCM's ``apns`` block for an iPhone on FCM), or for a
        call a data-only message the app handles itself; high priority when urgent, collapsing by its id."""
        android: dict[str, Any] = {"priority": "HIGH" if message.urgent or message.voip else "NORMAL",
                                   "ttl": f"{message.ttl_s()}s"}
        if message.collapse_id:
            android["collapse_key"] = collapse_key(message.collapse_id, 64)
        fcm: dict[str, Any] = {"token": target, "data": message.data, "android": android}
        if not message.voip:
            fcm["notification"] = {"title": message.title, "body": message.body}
            android["notification"] = {"channel_id": message.channel}
            fcm["apns"] = {"headers": message.apns_headers(), "payload": {"aps": message.aps()}}
        body = {"message": fcm}
        headers = {"Authorization": f"Bearer {await self.bearer()}"}
        url = f"{self.endpoint}/v1/projects/{self.project}/messages:send"
        resp = await self._post(url, json=body, headers=headers)
        if resp.status_code == 200:
            return
        if resp.status_code == 401:
            self._bearer = None
        raise status_error("fcm", resp.status_code, resp.text,
                           gone=resp.status_code == 404 or "UNREGISTERED" in resp.text)

    async def _post(self, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._http.post(url, **kwargs)
        except httpx.HTTPError as exc:
            raise PushError(f"fcm unreachable: {exc}", retryable=True) from None

    async def close(self) -> None:
        await self._http.aclose()


class APNsProvider:
    name = "apns"
    TOKEN_TTL_S = 50 * 60  # Apple refuses provider tokens older than an hour

    def __init__(self, team_id: str, key_id: str, private_key: str, topic: str, endpoint: str,
                 timeout_s: float = TIMEOUT_S) -> None:
        self.team_id, self.key_id, self.private_key, self.topic = team_id, key_id, private_key, topic
        self.endpoint = endpoint.rstrip("/")
        self._token: tuple[str, float] | None = None
        # APNs speaks HTTP/2 only: no HTTP/1.1 fallback (over TLS, ALPN offers h2 alone; over a plain http:// endpoint,
        # such as a local test receiver, HTTP/2 with prior knowledge).
        self._client = httpx.AsyncClient(http1=False, http2=True, timeout=timeout_s, trust_env=False)

    def provider_token(self) -> str:
        if self._token and self._token[1] > time.time():
            return self._token[0]
        token = jwt.encode({"iss": self.team_id, "iat": int(time.time())}, self.private_key, algorithm="ES256",
                           headers={"kid": self.key_id})
        self._token = (token, time.time() + self.TOKEN_TTL_S)
        return token

    async def send(self, target: str, message: PushMessage) -> None:
        """An alert push (its interruption level, priority, collapse id, expiry), or for a call a PushKit push:
        ``apns-push-type: voip`` to the ``<bundle>.voip`` topic, its payload the call's data (no ``aps``)."""
        headers = {"authorization": f"bearer {self.provider_token()}", **message.apns_headers()}
        if message.voip:
            headers.update({"apns-topic": f"{self.topic}.voip", "apns-push-type": "voip"})
            payload: dict[str, Any] = dict(message.data)
        else:
            headers.update({"apns-topic": self.topic, "apns-push-type": "alert"})
            payload = {"aps": {"alert": {"title": message.title, "body": message.body}, **message.aps()},
                       **message.data}
        try:
            resp = await self._client.post(f"{self.endpoint}/3/device/{target}", headers=headers,
                                           content=json.dumps(payload).encode())
        except httpx.HTTPError as exc:
            raise PushError(f"apns unreachable: {exc}", retryable=True) from None
        if resp.status_code == 200:
            return
        if resp.status_code == 403 and "ExpiredProviderToken" in resp.text:
            self._token = None
        raise status_error("apns", resp.status_code, resp.text,
                           gone=resp.status_code == 410 or "BadDeviceToken" in resp.text)

    async def close(self) -> None:
        await self._client.aclose()


class WebPushProvider:
    name = "webpush"

    def __init__(self, private_key: str, subject: str, urls: PublicClient) -> None:
        key = private_key.strip()
        self.vapid = Vapid.from_pem(key.encode()) if key.startswith("-----") else Vapid.from_string(key)
        self.subject = subject
        self.urls = urls

    async def send(self, target: dict[str, Any], message: PushMessage) -> None:
        """Encrypted (aes128gcm) to the browser's keys by ``pywebpush``, VAPID-signed, and posted to the
        endpoint, a URL the user gave: through ``PublicClient``, so only to public addresses (or an origin
        the operator trusts). One that is refused is dead: ``RefusedTarget``, and the token is dropped."""
        try:
            url = self.urls.allowed(target["endpoint"])  # before anything is made for it
            body = WebPusher(target).encode(json.dumps(message.payload()).encode(), "aes128gcm")["body"]
            claims = {"sub": self.subject, "aud": f"{url.scheme}://{url.netloc.decode()}",
                      "exp": int(time.time()) + 12 * 3600}
            headers = {**self.vapid.sign(claims), "Content-Encoding": "aes128gcm", "TTL": str(message.ttl_s()),
                       "Content-Type": "application/octet-stream",
                       "Urgency": WEBPUSH_URGENCY.get(message.level, "normal")}
            if message.collapse_id:  # RFC 8030: a newer message with the same topic replaces one not yet delivered
                headers["Topic"] = collapse_key(message.collapse_id, 32)
            resp = await self.urls.post(url, content=body, headers=headers)
        except UnsafeURL as exc:
            raise RefusedTarget(f"webpush endpoint refused ({exc.details['reason']})") from None
        except httpx.HTTPError as exc:
            raise PushError(f"webpush unreachable: {exc}", retryable=True) from None
        except (WebPushException, VapidException, ValueError) as exc:  # keys or endpoint it cannot use
            raise PushError(f"webpush subscription unusable: {exc}", gone=True) from None
        if resp.status_code not in (200, 201, 202):
            raise status_error("webpush", resp.status_code, resp.text, gone=resp.status_code in (404, 410))

    async def close(self) -> None:
        await self.urls.aclose()


class WebhookProvider:
    name = "webhook"

    def __init__(self, url: str, secret: str, timeout_s: float = TIMEOUT_S) -> None:
        self.url, self.secret, self.timeout_s = url, secret, timeout_s
        self._http = httpx.AsyncClient(trust_env=False)

    async def send(self, target: str, message: PushMessage) -> None:
        try:
            await post_signed(self._http, self.url, self.secret, "notification",
                              {"token": target, "notification": message.payload()}, timeout_s=self.timeout_s)
        except WebhookError as exc:
            raise status_error("webhook", exc.status) from None
        except httpx.HTTPError as exc:
            raise PushError(f"webhook unreachable: {exc}", retryable=True) from None

    async def close(self) -> None:
        await self._http.aclose()


def providers_from(settings: Settings) -> dict[str, Provider]:
    """The providers whose settings are present, by registration kind (``apns-voip`` is APNs' PushKit side)."""
    out: dict[str, Provider] = {}
    timeout_s = settings.push_timeout_s
    if settings.fcm_service_account:
        account = json.loads(_secret_text(settings.fcm_service_account.get_secret_value()))
        out["fcm"] = FCMProvider(account, settings.fcm_endpoint, settings.fcm_token_uri, timeout_s)
    if settings.apns_private_key and settings.apns_team_id and settings.apns_key_id and settings.apns_topic:
        out["apns"] = out["apns-voip"] = APNsProvider(
            settings.apns_team_id, settings.apns_key_id, _secret_text(settings.apns_private_key.get_secret_value()),
            settings.apns_topic, settings.apns_endpoint, timeout_s)
    if settings.vapid_private_key and settings.vapid_subject:
        urls = PublicClient(trusted_origins(settings.webpush_trusted_origins), timeout_s=timeout_s)
        out["webpush"] = WebPushProvider(_secret_text(settings.vapid_private_key.get_secret_value()),
                                         settings.vapid_subject, urls)
    if settings.push_webhook_url:
        out["webhook"] = WebhookProvider(settings.push_webhook_url, settings.signing_secret, timeout_s)
    return out
