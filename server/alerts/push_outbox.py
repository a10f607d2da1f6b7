"""The durable push outbox: every push is a document (``PushEntry``, one per registration and message) written
to the store before it is attempted, so that neither a crash nor a restart loses it.

- **Claimed under a lease.** Any process's workers (``push_workers`` each) claim due entries one at a time with
  an atomic ``find_one_and_update`` that moves the entry's ``next_attempt_at`` to the end of the lease
  (``push_lease_s``, longer than a provider's timeout): an entry whose process died is due again, for any
  process, when its lease runs out. A process looks when it writes entries (it wakes its own workers), when
  a retry it scheduled falls due, and every ``push_poll_s``.
- **Retried until its deadline.** A failure the provider calls temporary (a 429, a 5xx, no answer) is tried
  again after ``push_retry_base_s`` x 2^(attempt - 1), at most ``push_retry_max_s``, times a random factor in
  [0.5, 1] (jitter, so that a provider's outage does not end in a thundering herd), until the entry's
  deadline: ``push_deadline_s`` after it was written, or for an alert ``push_alert_deadline_s``. An alert's
  push is dropped once the alert is no longer open (acknowledged, resolved; as the store said within the last
  second) or a push of a later escalation level for the same device replaces it.
- **Dead tokens.** When the provider says the token is dead (APNs 410 / BadDeviceToken, FCM 404 / UNREGISTERED,
  Web Push 404 / 410) the registration is deleted (unless the device registered a new token meanwhile) and so
  are its entries.
- **Removed when done,** with each outcome counted (``healthmate_push_total{provider, outcome}``, Prometheus'
  default registry) and kept ``push_history_s`` in ``push_outcomes`` for the operator (``stats``).

Exactly once is not promised: a process that dies after the provider accepted a push and before it deleted the
entry has it sent again by another. Every push carries a collapse id (the alert, dose, notification or call id)
so the device shows the second in place of the first, never beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Counter, Gauge
from pymongo import ReturnDocument
from pymongo.errors import BulkWriteError

from server.alerts.documents import Alert, PushEntry, PushOutcome, PushToken
from server.alerts.push_providers import Provider, PushError, PushMessage, RefusedTarget
from server.core.config import Settings
from server.core.documents import aware, utcnow

log = logging.getLogger("server.alerts.push")
PUSHES = Counter("healthmate_push_total", "Push attempts by provider and outcome (sent, retried, dead_token, gave_up, "
                 "obsolete)", ["provider", "outcome"])
DEPTH = Gauge("healthmate_push_outbox_depth", "Pushes waiting in the outbox (due, retrying or in flight), as "
              "this process last counted them in the store")
HISTORY_FLUSH_S = 1.0
DEPTH_EVERY_S = 5.0
PRUNE_EVERY_S = 60.0
ALERT_FRESH_S = 1.0
WAITING = {"next_attempt_at": {"$ne": None}}  # not a rung call kept for its cancel
OUTCOMES = ("sent", "retried", "dead_token", "gave_up", "obsolete")


def backoff_s(settings: Settings, attempt: int) -> float:
    """The wait before attempt ``attempt + 1``: exponential, capped, with jitter."""
    delay = min(settings.push_retry_max_s, settings.push_retry_base_s * 2 ** min(attempt - 1, 30))
    return delay * random.uniform(0.5, 1.0)


class Outbox:
    def __init__(self, settings: Settings, providers: dict[str, Provider]) -> None:
        self.settings = settings
        self.providers = providers
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(2).hex()}"
        self._wake = asyncio.Event()
        self._history: list[PushOutcome] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._timers: set[asyncio.TimerHandle] = set()
        self._pruned_at = 0.0
        self._alerts: dict[Any, tuple[bool, float]] = {}  # alert id -> (open, when the store said so)
        for provider in providers:  # every series present from the start, at 0
            for outcome in OUTCOMES:
                PUSHES.labels(provider, outcome)

    @property
    def coll(self) -> Any:
        return PushEntry.get_pymongo_collection()

    async def start(self) -> None:
        if self.providers:
            self._tasks = [asyncio.create_task(self._work(), name=f"push-{i}")
                           for i in range(self.settings.push_workers)]
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="push-housekeeping"))

    async def stop(self) -> None:
        """Sends in flight are abandoned and their leases given back, so that the next process takes them at once."""
        for handle in self._timers:
            handle.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await self.coll.update_many({"lease_owner": self.owner, **WAITING}, {"$set": {
                "lease_owner": None, "lease_until": None, "next_attempt_at": utcnow()}})
        with contextlib.suppress(Exception):
            await self._flush()

    # --- writing ---------------------------------------------------------------------------------------

    async def add(self, entries: list[PushEntry]) -> int:
        """Store the entries (one already there, same id, is left as it is); wake this process's workers."""
        if not entries:
            return 0
        try:
            result = await self.coll.insert_many([e.model_dump(by_alias=True) for e in entries], ordered=False)
            added = len(result.inserted_ids)
        except BulkWriteError as exc:  # duplicates: the same message to the same registration, written before
            if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                raise
            added = exc.details.get("nInserted", 0)
        self.wake()
        return added

    def wake(self) -> None:
        self._wake.set()

    def _wake_in(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        self._timers = {h for h in self._timers if not h.cancelled() and h.when() > loop.time()}
        self._timers.add(loop.call_later(seconds, self._wake.set))

    # --- sending ---------------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            self._wake.clear()
            try:
                doc = await self._claim()
            except Exception:
                log.exception("claiming a push failed")
                doc = None
            if doc is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.push_poll_s)
                continue
            try:
                await self._attempt(PushEntry.model_validate(doc))
            except Exception:
                log.exception("push %s: handling its attempt failed (it is due again when its lease ends)", doc["_id"])

    async def _claim(self) -> dict[str, Any] | None:
        now = utcnow()
        lease = now + timedelta(seconds=self.settings.push_lease_s)
        return await self.coll.find_one_and_update(
            {"next_attempt_at": {"$lte": now}},
            {"$set": {"lease_owner": self.owner, "lease_until": lease, "next_attempt_at": lease},
             "$inc": {"attempt": 1}},
            sort=[("next_attempt_at", 1)], return_document=ReturnDocument.AFTER)

    async def _attempt(self, entry: PushEntry) -> None:
        if aware(entry.deadline) <= utcnow():
            log.warning("push %s given up after %d attempts: its deadline passed (%s)", entry.id, entry.attempt - 1,
                        entry.last_error)
            return await self._done(entry, "gave_up")
        if entry.alert_id is not None and not await self._alert_open(entry):
            return await self._done(entry, "obsolete")
        provider = self.providers.get(entry.provider)
        if provider is None:
            log.warning("push %s given up: provider %s is not configured", entry.id, entry.provider)
            return await self._done(entry, "gave_up")
        message = PushMessage(**entry.message, expires_at=aware(entry.deadline).timestamp())
        try:
            await provider.send(entry.target, message)
        except PushError as exc:
            return await self._failed(entry, exc)
        except Exception as exc:
            log.exception("push via %s failed", entry.provider)
            return await self._failed(entry, PushError(str(exc), retryable=True))
        if entry.kind == "call":  # kept, so that a cancel reaches this device
            await self.coll.update_one({"_id": entry.id}, {"$set": {
                "next_attempt_at": None, "sent_at": utcnow(), "lease_owner": None, "lease_until": None}})
            self._count(entry, "sent")
        else:
            await self._done(entry, "sent")

    async def _alert_open(self, entry: PushEntry) -> bool:
        """Whether the entry's alert is still open, as the store said at most ``ALERT_FRESH_S`` ago (one read for
        the pushes of an alert to all its recipients, not one each)."""
        loop = asyncio.get_running_loop()
        known = self._alerts.get(entry.alert_id)
        if known is None or loop.time() - known[1] > ALERT_FRESH_S:
            if len(self._alerts) > 10_000:
                self._alerts.clear()
            alert = await Alert.get_pymongo_collection().find_one({"_id": entry.alert_id}, {"status": 1})
            known = self._alerts[entry.alert_id] = (alert is not None and alert["status"] == "open", loop.time())
        return known[0]

    async def _failed(self, entry: PushEntry, exc: PushError) -> None:
        entry.last_error = str(exc)[:300]
        if exc.gone:
            if isinstance(exc, RefusedTarget):  # a registration from before the check, or DNS that changed
                log.warning("%s for token %s: dropped, not retried", exc, entry.token_id)
            else:
                log.info("dropping a dead %s token %s (%s)", entry.provider, entry.token_id, exc)
            field = "subscription" if entry.provider == "webpush" else "token"
            await PushToken.get_pymongo_collection().delete_one({"_id": entry.token_id, field: entry.target})
            await self.coll.delete_many({"token_id": entry.token_id, "target": entry.target, "_id": {"$ne": entry.id}})
            return await self._done(entry, "dead_token")
        delay = backoff_s(self.settings, entry.attempt)
        retry_at = utcnow() + timedelta(seconds=delay)
        if not exc.retryable or retry_at >= aware(entry.deadline):
            log.warning("push via %s given up after %d attempts: %s", entry.provider, entry.attempt, exc)
            return await self._done(entry, "gave_up")
        await self.coll.update_one({"_id": entry.id, "lease_owner": self.owner}, {"$set": {
            "next_attempt_at": retry_at, "lease_owner": None, "lease_until": None, "last_error": entry.last_error}})
        self._wake_in(delay)
        self._count(entry, "retried")

    async def _done(self, entry: PushEntry, outcome: str) -> None:
        await self.coll.delete_one({"_id": entry.id})
        self._count(entry, outcome)

    def _count(self, entry: PushEntry, outcome: str) -> None:
        PUSHES.labels(entry.provider, outcome).inc()
        now = utcnow()
        self._history.append(PushOutcome(at=now, provider=entry.provider, outcome=outcome, kind=entry.kind,
                                         attempt=entry.attempt, latency_ms=round(
                                             (now - aware(entry.created_at)).total_seconds() * 1000, 1)))

    # --- upkeep and the operator's view ----------------------------------------------------------------

    async def _housekeeping(self) -> None:
        """Outcomes written in batches; the depth gauge; rung calls and history past their time removed."""
        depth_at = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(HISTORY_FLUSH_S)
            try:
                await self._flush()
                if loop.time() - depth_at >= DEPTH_EVERY_S:
                    depth_at = loop.time()
                    DEPTH.set(await self.coll.count_documents(WAITING))
                if loop.time() - self._pruned_at >= PRUNE_EVERY_S:
                    self._pruned_at = loop.time()
                    await self._prune()
            except Exception:
                log.exception("push outbox upkeep failed")

    async def _flush(self) -> None:
        batch, self._history = self._history, []
        if batch:
            await PushOutcome.insert_many(batch)

    async def _prune(self) -> None:
        now = utcnow()
        await self.coll.delete_many({"next_attempt_at": None, "deadline": {"$lt": now}})
        await PushOutcome.get_pymongo_collection().delete_many(
            {"at": {"$lt": now - timedelta(seconds=self.settings.push_history_s)}})

    async def stats(self) -> dict[str, Any]:
        """The outbox now (waiting, of which in flight and retrying; the oldest waiting entry's age) and the
        outcomes of the kept history by provider, with the latency to a send."""
        now = utcnow()
        await self._flush()
        waiting = await self.coll.count_documents(WAITING)
        DEPTH.set(waiting)
        in_flight = await self.coll.count_documents({**WAITING, "lease_until": {"$gt": now}})
        retrying = await self.coll.count_documents({**WAITING, "lease_owner": None, "attempt": {"$gt": 0}})
        oldest = await self.coll.find_one(WAITING, {"created_at": 1}, sort=[("created_at", 1)])
        outcomes: dict[str, dict[str, int]] = {}
        pipeline = [{"$group": {"_id": {"provider": "$provider", "outcome": "$outcome"}, "n": {"$sum": 1}}}]
        async for row in await PushOutcome.get_pymongo_collection().aggregate(pipeline):
            outcomes.setdefault(row["_id"]["provider"], {})[row["_id"]["outcome"]] = row["n"]
        recent = PushOutcome.get_pymongo_collection().find(
            {"outcome": "sent", "at": {"$gt": now - timedelta(hours=1)}}, {"latency_ms": 1}).limit(100_000)
        latencies = sorted(r["latency_ms"] for r in await recent.to_list(None))
        return {"outbox": {"waiting": waiting, "in_flight": in_flight, "retrying": retrying,
                           "oldest_waiting_s": round((now - aware(oldest["created_at"])).total_seconds(), 1)
                           if oldest else None},
                "history": {"kept_s": self.settings.push_history_s, "outcomes": outcomes,
                            "sent_last_hour": len(latencies),
                            "latency_ms_p50": _pct(latencies, 0.5), "latency_ms_p99": _pct(latencies, 0.99)}}

    async def idle(self, timeout_s: float = 30.0) -> None:
        """Until no entry waits (tests and benches): rung calls kept for their cancel do not count."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while await self.coll.count_documents(WAITING):
            if loop.time() > deadline:
                raise TimeoutError("pushes still waiting in the outbox")
            await asyncio.sleep(0.05)
        await self._flush()


def _pct(ordered: list[float], q: float) -> float | None:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None


def deadline_of(settings: Settings, alert: bool, now: datetime) -> datetime:
    return now + timedelta(seconds=settings.push_alert_deadline_s if alert else settings.push_deadline_s)
