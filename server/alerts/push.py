"""Push delivery for users with no connected device: device push tokens registered per device
(``push:register``; a Web Push endpoint must be https and public, ``server.infra.safe_url``), and a
dispatcher that hands each offline user's notifications to the providers (``server.alerts.push_providers``)
from a bounded queue, in background workers, retrying failures with exponential backoff; a token the
provider calls dead, or whose endpoint is refused at send time, is dropped. It never blocks live delivery:
``Notifications.notify`` pushes live first and gives the offline users' notifications to ``push``.
(The registration events are in ``api.py``.)"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, replace
from typing import Any

from beanie import PydanticObjectId
from beanie.operators import In

from server.alerts.documents import Notification, ProviderName, PushToken, RegisterIn
from server.alerts.push_providers import Provider, PushError, PushMessage, RefusedTarget
from server.core.config import Settings
from server.core.errors import ApiError
from server.infra import safe_url

log = logging.getLogger(__name__)
TOKENS_PER_USER = 20


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
    def __init__(self, settings: Settings, providers: dict[str, Provider]) -> None:
        self.settings = settings
        self.providers = providers
        self.trusted = safe_url.trusted_origins(settings.webpush_trusted_origins)
        self.queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=settings.push_queue_size)
        self.dropped = 0
        self.sent = 0
        self._workers: list[asyncio.Task[None]] = []
        self._retries: set[asyncio.TimerHandle] = set()

    async def start(self) -> None:
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

    async def register(self, user: PydanticObjectId, device: str, body: RegisterIn) -> dict[str, Any]:
        """This device's address at a provider (replacing the one it had there). A Web Push endpoint is a
        URL the server will post to: https and public only (``unsafe_url`` otherwise), see ``safe_url``."""
        key = f"{user}:{device}:{body.provider}"
        if body.subscription is not None:
            try:
                await safe_url.check(str(body.subscription.endpoint), self.trusted)
            except safe_url.UnsafeURL as exc:
                exc.details["field"] = "subscription.endpoint"
                raise
        if await PushToken.find(PushToken.user_id == user, PushToken.id != key).count() >= TOKENS_PER_USER:
            raise ApiError("too_many_tokens", f"At most {TOKENS_PER_USER} push registrations per user", 409)
        subscription = body.subscription.model_dump(mode="json") if body.subscription else None
        doc = PushToken(id=key, user_id=user, device_id=device, provider=body.provider, token=body.token,
                        subscription=subscription)
        await doc.save()
        return {**doc.public(), "enabled": body.provider in self.providers}

    @staticmethod
    async def unregister(user: PydanticObjectId, device: str, provider: ProviderName | None) -> dict[str, Any]:
        """This device's addresses, at one provider or all."""
        query: dict[str, Any] = {"user_id": user, "device_id": device}
        if provider:
            query["provider"] = provider
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
            if isinstance(exc, RefusedTarget):  # a registration from before the check, or DNS that changed
                log.warning("%s for token %s: dropped, not retried", exc, job.token_id)
            else:
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
