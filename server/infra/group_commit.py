"""Group commit: concurrent durable inserts into one collection share one store command, and so one disk
sync (the embedded store syncs once per command; MongoDB journals a command's writes together).

A caller hands its documents to ``COMMITS.insert`` (rows) or ``COMMITS.insert_documents`` (Beanie
documents) and is answered only once its own documents are durable (the client writes with
``w=majority, j=true``), or with its own error: the batch is one unordered ``insert_many``, so one
document's duplicate key refuses that document alone. A failure of the command itself (the store gone
mid-write) fails every caller in the batch, whose writes are then not acknowledged (they may or may not
be stored, as with a single insert cut off the same way).

Batching: the first write to a collection with nothing in flight starts a batch that closes ``delay_s``
later (a few milliseconds); writes arriving while a batch is in flight join the next, sent as soon as
that one is answered, so under load a batch holds whatever came during one store round trip. One batch
per collection is in flight at a time.

``urgent`` writes (a crisis reading, an alert's notifications), and every write of a task that is part of
urgent work (``URGENCY.here()``: whatever a crisis reading's request writes), never wait: they are sent at
once on the urgent lane. While any is in flight, or other urgent work is in progress (``server.core.urgency``:
an alert being raised), the batches of every other write hold back (up to a second), so that the store serves
the alert's commands without other patients' readings, access records and reminder notifications between
them (unless ``HEALTHMATE_URGENT_FIRST=off``: then urgent writes queue like any other and nothing holds back).

``HEALTHMATE_GROUP_COMMIT=off`` (``enabled = False``) restores the one-command-per-write path (for the
``rush`` bench's in-run comparison), except for callers that always batched (``always=True``)."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from beanie import Document, PydanticObjectId
from beanie.odm.utils.dump import get_dict
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError, WriteError

from server.core.urgency import URGENCY
from server.infra.bulk import DUPLICATE_KEY, insert_new
from server.infra.store import URGENT_LANE

Row = Mapping[str, Any]


@dataclass
class _Queue:
    collection: AsyncCollection[Any]
    ignore_duplicates: bool
    pending: list[tuple[Row, asyncio.Future[None]]] = field(default_factory=list)
    flusher: asyncio.Task[None] | None = None


class GroupCommit:
    def __init__(self, delay_s: float = 0.002, max_batch: int = 1000) -> None:
        self.enabled = True
        self.delay_s = delay_s
        self.max_batch = max_batch
        self.batches = 0  # store commands sent, and the documents they carried (for the benches and tests)
        self.documents = 0
        self._queues: dict[tuple[int, str, bool], _Queue] = {}

    async def insert(self, collection: AsyncCollection[Any], rows: Sequence[Row], *, ignore_duplicates: bool = False,
                     always: bool = False, urgent: bool = False) -> None:
        """Insert ``rows`` durably; return once all are stored, or raise the first one's error. A duplicate key
        is that row's ``DuplicateKeyError`` unless ``ignore_duplicates`` (the row is there already)."""
        if not rows:
            return
        if self._at_once(urgent):
            await self._urgently(collection, rows, ignore_duplicates)
        elif not (self.enabled or always):
            await self._directly(collection, rows, ignore_duplicates)
        else:
            await self._queued(collection, rows, ignore_duplicates)

    async def insert_documents(self, docs: Sequence[Document], **options: bool) -> None:
        """Beanie documents (of one class), their ids given here if they have none; with group commit off,
        Beanie's own ``insert``/``insert_many`` as before."""
        if not docs:
            return
        cls = type(docs[0])
        if not (self.enabled or options.get("always") or self._at_once(options.get("urgent", False))):
            await (docs[0].insert() if len(docs) == 1 else cls.insert_many(list(docs)))
            return
        for doc in docs:
            if doc.id is None:
                doc.id = PydanticObjectId()
        keep_nulls = cls.get_settings().keep_nulls
        await self.insert(cls.get_pymongo_collection(), [get_dict(d, to_db=True, keep_nulls=keep_nulls) for d in docs],
                          **options)

    @staticmethod
    def _at_once(urgent: bool) -> bool:
        """Sent at once on the urgent lane: an urgent write, or any write of urgent work."""
        return (urgent and URGENCY.enabled) or URGENCY.here()

    @staticmethod
    async def _directly(collection: AsyncCollection[Any], rows: Sequence[Row], ignore_duplicates: bool) -> None:
        if ignore_duplicates:
            await insert_new(collection, list(rows))
        elif len(rows) == 1:
            await collection.insert_one(rows[0])
        else:
            await collection.insert_many(list(rows))

    async def _urgently(self, collection: AsyncCollection[Any], rows: Sequence[Row], ignore_duplicates: bool) -> None:
        async with URGENCY.urgent():
            await self._directly(URGENT_LANE(collection), rows, ignore_duplicates)

    async def _queued(self, collection: AsyncCollection[Any], rows: Sequence[Row], ignore_duplicates: bool) -> None:
        key = (id(collection.database.client), collection.full_name, ignore_duplicates)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(collection, ignore_duplicates)
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in rows]
        queue.pending += zip(rows, futures, strict=True)
        if queue.flusher is None or queue.flusher.done():  # (done: its event loop ended under it, in tests)
            # (in a context of its own: it serves every caller, not the urgent work whose write may start it)
            queue.flusher = asyncio.create_task(self._flush(queue), context=contextvars.Context())
        outcomes = await asyncio.gather(*futures, return_exceptions=True)  # (every one retrieved)
        if error := next((o for o in outcomes if isinstance(o, BaseException)), None):
            raise error

    async def _flush(self, queue: _Queue) -> None:
        batch: list[tuple[Row, asyncio.Future[None]]] = []
        try:
            await asyncio.sleep(self.delay_s)
            while queue.pending:
                await URGENCY.until_clear()
                batch, queue.pending = queue.pending[:self.max_batch], queue.pending[self.max_batch:]
                self.batches += 1
                self.documents += len(batch)
                outcomes = await self._send(queue, [row for row, _ in batch])
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():  # its caller gave up (cancelled)
                        continue
                    if outcome is None:
                        future.set_result(None)
                    else:
                        future.set_exception(outcome)
        finally:  # stopped (shutdown): whoever still waits is not acknowledged
            for _, future in [*batch, *queue.pending]:
                if not future.done():
                    future.set_exception(RuntimeError("group commit stopped before this write was acknowledged"))
            queue.pending = []
            queue.flusher = None

    @staticmethod
    async def _send(queue: _Queue, rows: list[Row]) -> list[BaseException | None]:
        """One unordered ``insert_many``; each row's outcome: None (stored) or its error."""
        try:
            await queue.collection.insert_many(rows, ordered=False)
            return [None] * len(rows)
        except BulkWriteError as exc:
            if exc.details.get("writeConcernErrors"):  # stored maybe, durable not known: nobody is acknowledged
                return [exc] * len(rows)
            outcomes: list[BaseException | None] = [None] * len(rows)
            for error in exc.details.get("writeErrors", []):
                code = error.get("code")
                if code == DUPLICATE_KEY and queue.ignore_duplicates:
                    continue
                kind = DuplicateKeyError if code == DUPLICATE_KEY else WriteError
                outcomes[error["index"]] = kind(error.get("errmsg", "write error"), code, error)
            return outcomes
        except Exception as exc:
            return [exc] * len(rows)


COMMITS = GroupCommit()
