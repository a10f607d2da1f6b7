"""Push delivery for users with no connected device: device push tokens registered per device
(``push:register``), and a dispatcher that hands each offline user's notifications to the providers
(``server.alerts.push_providers``) from a bounded queue, in background workers, retrying failures with
exponential backoff; a token the provider calls dead is dropped. It never blocks live delivery:
``Notifications.notify`` pushes live first and gives the offline users' notifications to ``push``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from beanie import PydanticObjectId
from beanie.operators import In
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator
from pymongo import ASCENDING, IndexModel

from server.alerts.notifications import Notification
from server.alerts.push_providers import Provider, PushError, PushMessage
from server.core.config import Settings
from server.core.documents import VersionedDocument, iso, utcnow
from server.core.errors import ApiError
from server.transport.realtime import EventContext, Realtime

log = logging.getLogger(__name__)
ProviderName = Literal["fcm", "apns", "webpush", "webhook"]
TOKENS_PER_USER = 20


class PushToken(VersionedDocument):
    """One device's address at one provider; the id is ``<user>:<device>:<provider>`` so a device
    re-registering replaces its token."""

    id: str  # type: ignore[assignment]
    user_id: PydanticObjectId
    device_id: str
    provider: ProviderName
    token: str | None = None
    subscription: dict[str, Any] | None = None  # Web Push
    created_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "push_tokens"
        indexes = [IndexModel([("user_id", ASCENDING)], name="user")]

    @property
    def target(self) -> Any:
        return self.subscription if self.provider == "webpush" else self.token

    def public(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "provider": self.provider, "created_at": iso(self.created_at)}


class SubscriptionKeys(BaseModel):
    model_config = ConfigDict(extra="forbid")
    p256dh: str = Field(min_length=20, max_length=200, pattern=r"^[A-Za-z0-9_=-]+$")
    auth: str = Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_=-]+$")


class Subscription(BaseModel):
    model_config = ConfigDict(extra="ignore")  # browsers add expirationTime
    endpoint: HttpUrl
    keys: SubscriptionKeys


class RegisterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: ProviderName
    token: str | None = Field(None, min_length=8, max_length=4096, pattern=r"^[A-Za-z0-9_:.\-]+$")
    subscription: Subscription | None = None

    @model_validator(mode="after")
    def one_target(self) -> RegisterIn:
        if (self.provider == "webpush") != (self.subscription is not None) or \
                (self.provider != "webpush") != (self.token is not None):
            raise ValueError("webpush takes a subscription; fcm, apns and webhook take a token")
        if self.provider == "apns" and not all(c in "0123456789abcdefABCDEF" for c in self.token or ""):
            raise ValueError("an APNs device token is hexadecimal")
        return self


class UnregisterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: ProviderName | None = None


@dataclass(frozen=True)
class Job:
    token_id: str
    provider: str
    target: Any
    message: PushMessage
    attempt: int = 1


def message_of(note: Notification) -> PushMessage:
    data = {"notification_id": str(note.id), "kind": note.kind}
    if note.patient_id is not None:
        data["patient_id"] = str(note.patient_id)
    data.update({k: str(v) for k, v in note.data.items() if isinstance(v, str | int | float | bool)})
    return PushMessage(title=note.title, body=note.body, urgency=note.urgency, data=data)


class PushDispatcher:
    def __init__(self, settings: Settings, realtime: Realtime, providers: dict[str, Provider]) -> None:
        self.settings = settings
        self.rt = realtime
        self.providers = providers
        self.queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=settings.push_queue_size)
        self.dropped = 0
        self.sent = 0
        self._workers: list[asyncio.Task[None]] = []
        self._retries: set[asyncio.TimerHandle] = set()
        realtime.event("push:register", RegisterIn)(self._register)
        realtime.event("push:unregister", UnregisterIn)(self._unregister)

    def start(self) -> None:
        if self.providers:
            self._workers = [asyncio.create_task(self._work(), name=f"push-{i}")
                             for i in range(self.settings.push_workers)]

    async def stop(self) -> None:
        for handle in self._retries:
            handle.cancel()
        for task in self._workers:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for provider in self.providers.values():
            with contextlib.suppress(Exception):
                await provider.close()

    # --- registration ------------------------------------------------------------------------------

    async def _register(self, ctx: EventContext, body: RegisterIn) -> dict[str, Any]:
        device = self.rt.device_ids.get(ctx.sid, "unknown")
        user = ctx.principal.user_id
        key = f"{user}:{device}:{body.provider}"
        if await PushToken.find(PushToken.user_id == user, PushToken.id != key).count() >= TOKENS_PER_USER:
            raise ApiError("too_many_tokens", f"At most {TOKENS_PER_USER} push registrations per user", 409)
        subscription = body.subscription.model_dump(mode="json") if body.subscription else None
        doc = PushToken(id=key, user_id=user, device_id=device, provider=body.provider, token=body.token,
                        subscription=subscription)
        await doc.save()
        return {**doc.public(), "enabled": body.provider in self.providers}

    async def _unregister(self, ctx: EventContext, body: UnregisterIn) -> dict[str, Any]:
        query: dict[str, Any] = {"user_id": ctx.principal.user_id,
                                 "device_id": self.rt.device_ids.get(ctx.sid, "unknown")}
        if body.provider:
            query["provider"] = body.provider
        result = await PushToken.get_pymongo_collection().delete_many(query)
        return {"removed": result.deleted_count}

    # --- delivery ------------------------------------------------------------------------------------

    async def push(self, notes: list[Notification]) -> None:
        """The ``Notifications`` pusher: queue a send per registered device of each offline user."""
        if not self.providers:
            return
        by_user: dict[PydanticObjectId, list[Notification]] = {}
        for note in notes:
            by_user.setdefault(note.user_id, []).append(note)
        tokens = await PushToken.find(In(PushToken.user_id, list(by_user))).to_list()
        for token in tokens:
            if token.provider in self.providers:
                for note in by_user[token.user_id]:
                    self._enqueue(Job(token.id, token.provider, token.target, message_of(note)))

    def _enqueue(self, job: Job) -> None:
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("push queue full: dropped a %s push (%d dropped so far)", job.provider, self.dropped)

    async def _work(self) -> None:
        while True:
            job = await self.queue.get()
            try:
                await self.providers[job.provider].send(job.target, job.message)
                self.sent += 1
            except PushError as exc:
                await self._failed(job, exc)
            except Exception as exc:
                log.exception("push via %s failed", job.provider)
                await self._failed(job, PushError(str(exc), retryable=True))
            finally:
                self.queue.task_done()

    async def _failed(self, job: Job, exc: PushError) -> None:
        if exc.gone:
            log.info("dropping a dead %s token (%s)", job.provider, exc)
            await PushToken.find(PushToken.id == job.token_id).delete()
        elif exc.retryable and job.attempt < self.settings.push_max_attempts:
            delay = self.settings.push_retry_base_s * 2 ** (job.attempt - 1)
            loop = asyncio.get_running_loop()
            handle = loop.call_later(delay, self._retry, replace(job, attempt=job.attempt + 1))
            self._retries.add(handle)
        else:
            log.warning("push via %s given up after %d attempts: %s", job.provider, job.attempt, exc)

    def _retry(self, job: Job) -> None:
        self._retries = {h for h in self._retries if not h.cancelled() and h.when() > asyncio.get_running_loop().time()}
        self._enqueue(job)
