"""Push delivery providers behind one interface: ``send(target, message)`` raises ``PushError``
(``retryable`` or ``gone``, the latter meaning the device token is dead and is dropped).

- FCM HTTP v1: a service-account JWT (RS256) is exchanged for an OAuth2 bearer token (cached), then
  ``POST {endpoint}/v1/projects/<project>/messages:send``.
- APNs: HTTP/2 (``httpx``) ``POST {endpoint}/3/device/<token>`` with a provider token (ES256 JWT from
  the .p8 key, renewed every 50 minutes).
- Web Push: the browser's subscription, aes128gcm-encrypted by ``pywebpush`` and VAPID-signed, posted to its
  endpoint (a URL the user gave) over ``server.infra.safe_url.PublicClient``: https, public addresses only.
- Webhook: an HMAC-signed POST to one configured URL (``server.infra.webhook``).

Every operator endpoint is a setting, so tests point the providers at a local receiver; Web Push
subscriptions reach one only at an origin the operator trusts (``HEALTHMATE_WEBPUSH_TRUSTED_ORIGINS``).
"""

from __future__ import annotations

import json
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


@dataclass
class PushMessage:
    title: str
    body: str
    urgency: str = "normal"  # low | normal | high | critical
    data: dict[str, str] = field(default_factory=dict)  # string values (FCM requires it)

    @property
    def urgent(self) -> bool:
        return self.urgency in ("high", "critical")

    def payload(self) -> dict[str, Any]:
        return {"title": self.title, "body": self.body, "urgency": self.urgency, "data": self.data}


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

    def __init__(self, service_account: dict[str, Any], endpoint: str, token_uri: str | None = None) -> None:
        self.account = service_account
        self.project = service_account["project_id"]
        self.endpoint = endpoint.rstrip("/")
        self.token_uri = token_uri or service_account.get("token_uri", "https://oauth2.googleapis.com/token")
        self._bearer: tuple[str, float] | None = None
        self._http = httpx.AsyncClient(timeout=TIMEOUT_S, trust_env=False)

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
        body = {"message": {
            "token": target,
            "notification": {"title": message.title, "body": message.body},
            "data": message.data,
            "android": {"priority": "HIGH" if message.urgent else "NORMAL"},
            "apns": {"headers": {"apns-priority": "10" if message.urgent else "5"}},
        }}
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

    def __init__(self, team_id: str, key_id: str, private_key: str, topic: str, endpoint: str) -> None:
        self.team_id, self.key_id, self.private_key, self.topic = team_id, key_id, private_key, topic
        self.endpoint = endpoint.rstrip("/")
        self._token: tuple[str, float] | None = None
        self._client = httpx.AsyncClient(http2=True, timeout=TIMEOUT_S)

    def provider_token(self) -> str:
        if self._token and self._token[1] > time.time():
            return self._token[0]
        token = jwt.encode({"iss": self.team_id, "iat": int(time.time())}, self.private_key, algorithm="ES256",
                           headers={"kid": self.key_id})
        self._token = (token, time.time() + self.TOKEN_TTL_S)
        return token

    async def send(self, target: str, message: PushMessage) -> None:
        aps: dict[str, Any] = {"alert": {"title": message.title, "body": message.body}, "sound": "default"}
        if message.urgent:
            aps["interruption-level"] = "time-sensitive"
        headers = {"authorization": f"bearer {self.provider_token()}", "apns-topic": self.topic,
                   "apns-push-type": "alert", "apns-priority": "10" if message.urgent else "5"}
        try:
            resp = await self._client.post(f"{self.endpoint}/3/device/{target}", headers=headers,
                                           content=json.dumps({"aps": aps, **message.data}).encode())
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
            headers = {**self.vapid.sign(claims), "Content-Encoding": "aes128gcm", "TTL": "3600",
                       "Content-Type": "application/octet-stream", "Urgency": "high" if message.urgent else "normal"}
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

    def __init__(self, url: str, secret: str) -> None:
        self.url, self.secret = url, secret
        self._http = httpx.AsyncClient(trust_env=False)

    async def send(self, target: str, message: PushMessage) -> None:
        try:
            await post_signed(self._http, self.url, self.secret, "notification",
                              {"token": target, "notification": message.payload()}, timeout_s=TIMEOUT_S)
        except WebhookError as exc:
            raise status_error("webhook", exc.status) from None
        except httpx.HTTPError as exc:
            raise PushError(f"webhook unreachable: {exc}", retryable=True) from None

    async def close(self) -> None:
        await self._http.aclose()


def providers_from(settings: Settings) -> dict[str, Provider]:
    """The providers whose settings are present."""
    out: dict[str, Provider] = {}
    if settings.fcm_service_account:
        account = json.loads(_secret_text(settings.fcm_service_account.get_secret_value()))
        out["fcm"] = FCMProvider(account, settings.fcm_endpoint, settings.fcm_token_uri)
    if settings.apns_private_key and settings.apns_team_id and settings.apns_key_id and settings.apns_topic:
        out["apns"] = APNsProvider(settings.apns_team_id, settings.apns_key_id,
                                   _secret_text(settings.apns_private_key.get_secret_value()), settings.apns_topic,
                                   settings.apns_endpoint)
    if settings.vapid_private_key and settings.vapid_subject:
        urls = PublicClient(trusted_origins(settings.webpush_trusted_origins), timeout_s=TIMEOUT_S)
        out["webpush"] = WebPushProvider(_secret_text(settings.vapid_private_key.get_secret_value()),
                                         settings.vapid_subject, urls)
    if settings.push_webhook_url:
        out["webhook"] = WebhookProvider(settings.push_webhook_url, settings.signing_secret)
    return out
