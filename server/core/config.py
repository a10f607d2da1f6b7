"""Settings from the environment (prefix ``HEALTHMATE_``).

No secret has a usable default in production: ``HEALTHMATE_ENV=production`` without
``HEALTHMATE_JWT_SECRET`` (or, with a webhook configured, ``HEALTHMATE_WEBHOOK_SECRET``) stops start-up.
In development random secrets are generated once and kept in the data dir (0600), so tokens survive
restarts of ``make run``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigError(RuntimeError):
    """Start-up cannot proceed; the message says what to set."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HEALTHMATE_", extra="ignore", env_ignore_empty=True)

    env: Literal["development", "production"] = "development"
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    data_dir: Path = Path("data")
    mongodb_url: str | None = None
    # The bulk collections' store (server.app.BULK_DOCUMENTS): unset, a second embedded store process under
    # <data dir>/bulk when the store is embedded, else the same store as the rest.
    bulk_mongodb_url: str | None = None
    mongodb_db: str = "healthmate"
    redis_url: str | None = None
    jwt_secret: SecretStr | None = None
    jwt_issuer: str = "healthmate"
    access_token_ttl_s: int = Field(15 * 60, ge=30, le=24 * 3600)
    refresh_token_ttl_s: int = Field(30 * 24 * 3600, ge=60)
    link_code_ttl_s: int = Field(10 * 60, ge=10, le=24 * 3600)
    # Throttling, per window of login_failure_window_s (then 429 too_many_attempts with Retry-After):
    # failed logins and password changes per account and per client address, registrations per address
    # (and per email), failed link-code redemptions per account, per address and over all of them.
    login_max_failures_per_account: int = Field(5, ge=1)
    login_max_failures_per_ip: int = Field(20, ge=1)
    login_failure_window_s: int = Field(15 * 60, ge=1)
    register_max_per_ip: int = Field(20, ge=1)
    link_redeem_max_failures_per_account: int = Field(10, ge=1)
    link_redeem_max_failures_per_ip: int = Field(30, ge=1)
    link_redeem_max_failures_global: int = Field(10_000, ge=1)
    # Heavy reads (FHIR export, per-minute analyses over more than a day): one at a time per user, this many a minute.
    heavy_reads_per_minute: int = Field(6, ge=1)
    # Argon2 runs one hash per core at a time; this many more may wait, past that `busy` (503).
    password_queue: int = Field(32, ge=0, le=10_000)
    cors_origins: list[str] = []
    trust_forwarded: bool = False  # take the client address from X-Forwarded-For (behind nginx)
    metrics_token: SecretStr | None = None  # bearer token /metrics asks for; unset: loopback clients only
    max_message_bytes: int = 1_000_000  # largest Socket.IO message accepted (transport limit)
    max_body_bytes: int = 1_000_000  # largest JSON REST body (uploads have their own limit)
    upload_max_bytes: int = Field(10 * 1024 * 1024, ge=1024)  # an uploaded image, streamed and cut off past this
    upload_max_dimension: int = Field(8192, ge=16, le=65535)  # pixels on the longer side of an uploaded image
    device_silence_s: float = Field(60.0, ge=0.2, le=86400)  # a device silent this long is marked disconnected
    # MQTT for devices: the bridge's broker connection (mqtt://user:password@host:1883), and the folder
    # where the server keeps the broker's password and ACL files when it manages the broker.
    mqtt_url: SecretStr | None = None
    mqtt_broker_dir: Path | None = None
    # Rate limits: events per connection and per user (per process), connects per client address.
    event_rate_per_s: float = Field(50.0, gt=0)
    event_burst: int = Field(200, ge=1)
    user_event_rate_per_s: float = Field(150.0, gt=0)
    user_event_burst: int = Field(500, ge=1)
    connect_rate_per_s: float = Field(10.0, gt=0)
    connect_burst: int = Field(100, ge=1)
    store_timeout_ms: int = Field(5000, ge=100, le=60_000)  # how long a request waits for an unavailable store
    # Concurrent durable writes to a collection share one store command and disk sync (server/infra/group_commit.py).
    group_commit: bool = True
    # Alerts before bulk work (server/core/urgency.py): off only for the rush bench's in-run comparison.
    urgent_first: bool = True
    analysis_workers: int = Field(1, ge=1, le=64)  # processes running the streaming analysis
    raw_retention_days: int = Field(30, ge=1)  # raw waveforms; analyses are kept
    # Calls: how long an invite rings, how long a dropped participant has to come back, how often
    # every process sweeps for timers a dead process left behind; ICE servers handed to clients.
    call_ring_timeout_s: float = Field(30.0, gt=0, le=600)
    call_grace_s: float = Field(20.0, ge=0, le=600)
    call_sweep_s: float = Field(2.0, gt=0, le=60)
    stun_urls: list[str] = []
    turn_urls: list[str] = []
    turn_secret: SecretStr | None = None  # coturn's static-auth-secret (use-auth-secret)
    turn_ttl_s: int = Field(6 * 3600, ge=60, le=7 * 24 * 3600)
    call_retention_days: int = Field(365, ge=1)  # call history and recordings
    dose_grace_s: int = Field(30 * 60, ge=1, le=24 * 3600)  # unconfirmed this long after due: missed
    dose_recover_s: float = Field(30, gt=0, le=600)  # how often claims a dead process left are looked for
    demo: bool = False
    # Emergency alerts: unacknowledged for this long, an alert escalates (twice: louder, then outward).
    alert_escalation_s: float = Field(120.0, ge=1, le=3600)
    alert_sweep_s: float = Field(1.0, ge=0.1, le=60)  # how often each process resumes pending emits/escalations
    alert_emit_lease_s: float = Field(5.0, ge=0.5, le=300)  # after this, another process emits a stalled alert
    # Per-device push of what must be confirmed (alerts, due doses, urgent notifications): a registered device that
    # has not confirmed it this long after it was sent is pushed it (one with no socket at once); a call's callee
    # device that has not acknowledged `call:incoming` this long is rung by VoIP push (one with no socket at once).
    alert_push_after_s: float = Field(5.0, ge=0.05, le=600)
    call_push_after_s: float = Field(3.0, ge=0.05, le=60)
    emergency_webhook_url: str | None = None  # the emergency contacts' notification channel (e.g. an SMS gateway)
    # The emergency channel's caps per patient per UTC day: new alerts raised on demand (triage), and calls of
    # the emergency webhook (past it: logged for the operator and noted on the alert, not called).
    alerts_on_demand_per_day: int = Field(5, ge=1, le=1000)
    emergency_webhook_per_day: int = Field(10, ge=1, le=10_000)
    webhook_secret: SecretStr | None = None  # HMAC key for signed webhooks: never the JWT secret
    # Push delivery through the durable outbox (each provider is on when its settings are given): sends at a time
    # per process; retries with exponential backoff and jitter (base, 2x, 4x, ... up to the max) until the
    # message's deadline (an alert's: until it is acknowledged or resolved, or this long at most); a claimed send
    # is another process's after the lease (longer than a provider's timeout); the idle poll; the operator's
    # history of outcomes is kept this long.
    push_workers: int = Field(8, ge=1, le=64)
    push_retry_base_s: float = Field(1.0, ge=0.01, le=600)
    push_retry_max_s: float = Field(300.0, ge=0.01, le=3600)
    push_deadline_s: float = Field(3600.0, ge=1, le=7 * 24 * 3600)
    push_alert_deadline_s: float = Field(24 * 3600.0, ge=1, le=7 * 24 * 3600)
    push_timeout_s: float = Field(10.0, gt=0, le=120)
    push_lease_s: float = Field(30.0, gt=0, le=3600)
    push_poll_s: float = Field(1.0, gt=0, le=60)
    push_history_s: float = Field(7 * 24 * 3600.0, ge=60, le=90 * 24 * 3600)
    fcm_service_account: SecretStr | None = None  # the service-account JSON, or a path to it
    fcm_endpoint: str = "https://fcm.googleapis.com"
    fcm_token_uri: str | None = None  # default: the service account's token_uri
    apns_team_id: str | None = None
    apns_key_id: str | None = None
    apns_private_key: SecretStr | None = None  # the .p8 key (PEM), or a path to it
    apns_topic: str | None = None  # the app's bundle id
    apns_endpoint: str = "https://api.push.apple.com"
    vapid_private_key: SecretStr | None = None  # PEM or base64url (py_vapid), or a path to it
    vapid_subject: str | None = None  # mailto: or https: contact for the push services
    # Web Push endpoints are users' URLs: https and public addresses only, except at these origins
    # (scheme://host[:port], exactly), push services the operator runs or trusts on its own network.
    webpush_trusted_origins: list[str] = []
    push_webhook_url: str | None = None
    # Organisations: how long an invitation link stays valid, the address the server is reached at (links in
    # mail and printed by the CLI; unset: the address of the admin's request), and the SMTP server invitations
    # are mailed through (smtp://user:password@host:587, STARTTLS when offered; smtps:// for TLS from the start).
    invitation_ttl_s: int = Field(3 * 24 * 3600, ge=60, le=30 * 24 * 3600)
    public_url: str | None = None
    smtp_url: SecretStr | None = None
    smtp_from: str | None = None  # the From address, required with smtp_url
    smtp_timeout_s: float = Field(10.0, gt=0, le=120)
    fault_injection: Literal["", "crash_after_alert_persist"] = ""  # tests only; refused in production
    log_level: str = "INFO"

    def resolve_secrets(self) -> Settings:
        """Fill the JWT and webhook secrets, one key per purpose (RFC 8725): required in production
        (the webhook secret as soon as a webhook is configured), generated once and kept in the data dir
        in development, where a kept file must be the owner's alone (0600) and long enough."""
        if self.env == "production" and self.fault_injection:
            raise ConfigError("HEALTHMATE_FAULT_INJECTION is for tests; unset it in production")
        if self.push_lease_s <= self.push_timeout_s:
            raise ConfigError("HEALTHMATE_PUSH_LEASE_S must be longer than HEALTHMATE_PUSH_TIMEOUT_S (a send still "
                              "running must not be taken over by another process)")
        jwt = _given("HEALTHMATE_JWT_SECRET", self.jwt_secret)
        hook = _given("HEALTHMATE_WEBHOOK_SECRET", self.webhook_secret)
        if jwt is not None and hook == jwt:
            raise ConfigError("HEALTHMATE_WEBHOOK_SECRET must differ from HEALTHMATE_JWT_SECRET (one key per purpose)")
        if self.env == "production":
            if jwt is None:
                raise ConfigError(
                    "HEALTHMATE_JWT_SECRET is not set; production refuses to start without it "
                    '(generate one: python -c "import secrets; print(secrets.token_urlsafe(48))")')
            if hook is None and (self.emergency_webhook_url or self.push_webhook_url):
                raise ConfigError("HEALTHMATE_WEBHOOK_SECRET is not set; production refuses to call a webhook "
                                  "without its own signing key (not the JWT secret)")
        return self.model_copy(update={
            "jwt_secret": SecretStr(jwt or _kept_secret(self.data_dir / "jwt_secret")),
            "webhook_secret": SecretStr(hook or _kept_secret(self.data_dir / "webhook_secret"))
            if hook or self.env != "production" else None})

    @property
    def signing_secret(self) -> str:
        assert self.webhook_secret is not None, "a webhook needs HEALTHMATE_WEBHOOK_SECRET"
        return self.webhook_secret.get_secret_value()

    @property
    def secret(self) -> str:
        assert self.jwt_secret is not None, "resolve_secrets() first"
        return self.jwt_secret.get_secret_value()


MIN_SECRET = 32


def _given(name: str, value: SecretStr | None) -> str | None:
    if value is None or not value.get_secret_value():
        return None
    if len(value.get_secret_value()) < MIN_SECRET:
        raise ConfigError(f"{name} must be at least {MIN_SECRET} characters")
    return value.get_secret_value()


def _kept_secret(path: Path) -> str:
    """The development secret in ``path``, made (0600) on first use. A file others may read or write, or
    one too short, is refused rather than used: anyone who can read it can mint tokens or sign webhooks."""
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(f"{path} is readable or writable by others (mode {mode:o}); chmod 600 it")
        secret = path.read_text().strip()
        if len(secret) < MIN_SECRET:
            raise ConfigError(f"{path} holds a secret under {MIN_SECRET} characters; delete it to make a new one")
        return secret
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Written whole beside it, then linked into place: processes starting together on a fresh folder keep the
    # first one's secret, and none reads a file another is still writing.
    fd, made = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # (mode 0600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
        with contextlib.suppress(FileExistsError):
            os.link(made, path)
    finally:
        os.unlink(made)
    return _kept_secret(path)


def settings_from(args: object) -> Settings:
    """Settings with what a command line gave (``host``, ``port``, ``data_dir``, ``demo``) over the environment."""
    given = {name: getattr(args, name, None) for name in ("host", "port", "data_dir", "demo")}
    given["demo"] = given["demo"] or None
    return load_settings(**{k: v for k, v in given.items() if v is not None})


def load_settings(**overrides: object) -> Settings:
    return Settings(**overrides).resolve_secrets()  # type: ignore[arg-type]
