"""The durable push outbox: every push is a document (``PushEntry``, one per registration and message) written
to the store before it is attempted, so that neither a crash nor a restart loses it.

- **Claimed under a lease.** The process that writes entries writes them claimed by itself (leased for
  ``push_lease_s``, longer than a provider's timeout) and queues them for its ``push_workers`` senders; retries,
  and the entries of a process that died once their lease has run out, are claimed by any process, oldest
  first, in batches of up to 4 per worker, with a conditional update that moves each entry's
  ``next_attempt_at`` to the end of its lease (of two processes, one wins). A worker does not start a send its
  lease could not cover. A process looks for due entries when a retry it scheduled falls due and every
  ``push_poll_s``.
- **Retried until its deadline.** A failure the provider calls temporary (a 429, a 5xx, no answer) is tried
  again after ``push_retry_base_s`` x 2^(attempt - 1), at most ``push_retry_max_s``, times a random factor in
  [0.5, 1] (jitter, so that a provider's outage does not end in a thundering herd), until the entry's
  deadline: ``push_deadline_s`` after it was written, or for an alert ``push_alert_deadline_s``. An alert's
  push is dropped once the alert is no longer open (acknowledged, resolved; as the store said within the last
  second) or a push of a later escalation level for the same device replaces it.
- **Dead tokens.** When the provider says the token is dead (APNs 410 / BadDeviceToken, FCM 404 / UNREGISTERED,
  Web Push 404 / 410) the registration is deleted (unless the device registered a new token meanwhile) and so
  are its entries.
- **Removed when done** (in batches, within 20 ms of the provider's answer), with each outcome counted
  (``healthmate_push_total{provider, outcome}``, Prometheus' default registry) and kept ``push_history_s`` in
  ``push_outcomes`` for the operator (``stats``).

Exactly once is not promised: a process that dies after the provider accepted a push and before it deleted the
entry has it sent again by another. Every push carries a collapse id (the alert, dose, notification or call id)
so the device shows the second in place of the first, never beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import socket
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Counter, Gauge
from pymongo.errors import BulkWriteError

from server.alerts.documents import Alert, PushEntry, PushOutcome, PushToken
from server.alerts.push_providers import Provider, PushError, PushMessage, RefusedTarget
from server.core.background import cancel_and_wait
from server.core.config import Settings
from server.core.documents import EPOCH, aware, utcnow

log = logging.getLogger("server.alerts.push")
PUSHES = Counter("healthmate_push_total", "Push attempts by provider and outcome (sent, retried, dead_token, gave_up, "
                 "obsolete)", ["provider", "outcome"])
DEPTH = Gauge("healthmate_push_outbox_depth", "Pushes waiting in the outbox (due, retrying or in flight), as "
              "this process last counted them in the store", multiprocess_mode="livemax")
HISTORY_FLUSH_S = 1.0
DEPTH_EVERY_S = 5.0
PRUNE_EVERY_S = 60.0
ALERT_FRESH_S = 1.0
CLAIM_PER_WORKER = 4
REMOVE_EVERY_S = 0.02
WAITING = {"next_attempt_at": {"$gte": EPOCH}}  # not a rung call kept for its cancel (a range: on ``due``)
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
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()  # claimed, for the workers
        self._taken = asyncio.Event()
        self._claims = itertools.count()
        self._removals: list[str] = []  # done: removed from the store in batches
        self._removal = asyncio.Event()
        self._send_time = timedelta(seconds=settings.push_timeout_s)
        for provider in providers:  # every series present from the start, at 0
            for outcome in OUTCOMES:
                PUSHES.labels(provider, outcome)

    @property
    def coll(self) -> Any:
        return PushEntry.get_pymongo_collection()

    async def start(self) -> None:
        """Nothing runs without a provider (nothing is then written either)."""
        if self.providers:
            self._tasks = [asyncio.create_task(self._work(), name=f"push-{i}")
                           for i in range(self.settings.push_workers)]
            self._tasks += [asyncio.create_task(self._claim_forever(), name="push-claims"),
                            asyncio.create_task(self._remove_forever(), name="push-removals"),
                            asyncio.create_task(self._housekeeping(), name="push-housekeeping")]

    async def stop(self) -> None:
        """Sends in flight are abandoned; what was done is removed and the rest's leases given back, so that the
        next process takes them at once."""
        for handle in self._timers:
            handle.cancel()
        await cancel_and_wait(*self._tasks)
        with contextlib.suppress(Exception):
            await self._remove()
        with contextlib.suppress(Exception):
            await self.coll.update_many({"lease_owner": self.owner, **WAITING}, {"$set": {
                "lease_owner": None, "lease_until": None, "next_attempt_at": utcnow()}})
        with contextlib.suppress(Exception):
            await self._flush()

    # --- writing ---------------------------------------------------------------------------------------

    async def add(self, entries: list[PushEntry]) -> int:
        """Store the entries already claimed by this process (so that it sends them without a claim query, and any
        other takes them if it dies) and queue them for its workers; one already there (same id) is left as it is.
        How many were new."""
        if not entries:
            return 0
        now = utcnow()
        lease, claim = now + timedelta(seconds=self.settings.push_lease_s), f"{self.owner}/{next(self._claims)}"
        docs = [{**e.model_dump(by_alias=True), "attempt": 1, "next_attempt_at": lease, "lease_owner": self.owner,
                 "lease_until": lease, "claim": claim} for e in entries]
        try:
            await self.coll.insert_many(docs, ordered=False)
        except BulkWriteError as exc:  # duplicates: the same message to the same registration, written before
            if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                raise
            there = {e["index"] for e in exc.details.get("writeErrors", [])}
            docs = [d for i, d in enumerate(docs) if i not in there]
        for doc in docs:
            self._queue.put_nowait(doc)
        return len(docs)

    def wake(self) -> None:
        self._wake.set()

    def _wake_in(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        self._timers = {h for h in self._timers if not h.cancelled() and h.when() > loop.time()}
        self._timers.add(loop.call_later(seconds, self._wake.set))

    # --- sending ---------------------------------------------------------------------------------------

    async def _claim_forever(self) -> None:
        """Keeps the workers' queue fed: due entries claimed in batches (a range query costs the store about as
        much for a batch as for one), each entry under its own lease."""
        batch = CLAIM_PER_WORKER * self.settings.push_workers
        while True:
            if self._queue.qsize() >= self.settings.push_workers:
                self._taken.clear()
                await self._taken.wait()
                continue
            self._wake.clear()
            try:
                docs = await self._claim(batch - self._queue.qsize())
            except Exception:
                log.exception("claiming pushes failed")
                docs = []
            for doc in docs:
                self._queue.put_nowait(doc)
            if not docs:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.push_poll_s):
                        await self._wake.wait()

    async def _claim(self, count: int) -> list[dict[str, Any]]:
        """Up to ``count`` due entries, oldest first: each moved to the end of its lease by a conditional update,
        so of two processes claiming one entry one wins (the claim token says which)."""
        now = utcnow()
        due = self.coll.find({"next_attempt_at": {"$lte": now}}, {"_id": 1}).sort("next_attempt_at", 1).limit(count)
        ids = [d["_id"] for d in await due.to_list(None)]
        if not ids:
            return []
        lease, claim = now + timedelta(seconds=self.settings.push_lease_s), f"{self.owner}/{next(self._claims)}"
        await self.coll.update_many({"_id": {"$in": ids}, "next_attempt_at": {"$lte": now}}, {
            "$set": {"lease_owner": self.owner, "lease_until": lease, "next_attempt_at": lease, "claim": claim},
            "$inc": {"attempt": 1}})
        return await self.coll.find({"_id": {"$in": ids}, "claim": claim}).to_list(None)

    async def _work(self) -> None:
        while True:
            doc = await self._queue.get()
            self._taken.set()
            try:
                entry = PushEntry.model_validate(doc)
                if entry.lease_until is None or aware(entry.lease_until) - utcnow() < self._send_time:
                    continue  # its lease could run out mid-send: left to whoever claims it when the lease ends
                await self._attempt(entry)
            except Exception:
                log.exception("push %s: handling its attempt failed (it is due again when its lease ends)", doc["_id"])

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
        """Counted now, removed from the store with others within ``REMOVE_EVERY_S``."""
        self._removals.append(entry.id)
        self._removal.set()
        self._count(entry, outcome)

    async def _remove_forever(self) -> None:
        while True:
            await self._removal.wait()
            await asyncio.sleep(REMOVE_EVERY_S)
            self._removal.clear()
            try:
                await self._remove()
            except Exception:
                log.exception("removing sent pushes failed (they may be sent again)")

    async def _remove(self) -> None:
        batch, self._removals = self._removals, []
        if batch:
            await self.coll.delete_many({"_id": {"$in": batch}})

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
