"""Connection to MongoDB (or the embedded store), Beanie initialisation, and what the driver reports of the store
(commands sent, reachability) counted for ``/healthz`` and ``/metrics``."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from beanie import Document, init_beanie
from beanie.odm.utils.parsing import parse_obj
from gridfs import AsyncGridFSBucket, AsyncGridIn
from pymongo import AsyncMongoClient, monitoring
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from server.infra.metrics import STORE_COMMANDS, STORE_OUTAGES, STORE_UNAVAILABLE_SECONDS, STORE_UP, child
from server.infra.migrations import MigrationRecord
from server.infra.ratelimit import ThrottleWindow


class CommandCounter(monitoring.CommandListener):
    """Counts the store commands this process's clients send (PyMongo command monitoring); ``/healthz``
    reports the total, so that store work can be divided by the operations that caused it; ``by_name`` counts
    them per command (``insert``, ``find``, ...), for the per-action counts in docs/operations.md, and
    ``/metrics`` exports the same count by command name."""

    def __init__(self) -> None:
        self.total = 0
        self.by_name: Counter[str] = Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.total += 1
        child(STORE_COMMANDS, event.command_name).inc()
        self.by_name[event.command_name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


COMMANDS = CommandCounter()


class StoreReachability(monitoring.ServerListener, monitoring.ServerHeartbeatListener):
    """The store's reachability as the driver sees it (server discovery and monitoring): an outage starts
    when a server the client knew turns unknown (a failed heartbeat, or an operation's network error) and
    ends when it is known again, or its client closes. Counted in ``STORE_OUTAGES``; its seconds go into
    ``STORE_UNAVAILABLE_SECONDS`` at each failed heartbeat meanwhile and at its end; ``STORE_UP`` is 0 while
    any client of this process is in an outage."""

    def __init__(self) -> None:
        self.down: dict[Any, float] = {}  # (topology, server) in an outage -> when its seconds were last counted

    def description_changed(self, event: monitoring.ServerDescriptionChangedEvent) -> None:
        key = (event.topology_id, event.server_address)
        if event.new_description.is_server_type_known:
            self._end(key)
        elif event.previous_description.is_server_type_known and key not in self.down:
            self.down[key] = time.monotonic()
            STORE_OUTAGES.inc()
            STORE_UP.set(0)

    def closed(self, event: monitoring.ServerClosedEvent) -> None:
        self._end((event.topology_id, event.server_address))

    def failed(self, event: monitoring.ServerHeartbeatFailedEvent) -> None:
        for key in [k for k in self.down if k[1] == event.connection_id]:
            self._count(key)

    def _count(self, key: Any) -> None:
        now = time.monotonic()
        STORE_UNAVAILABLE_SECONDS.inc(now - self.down[key])
        self.down[key] = now

    def _end(self, key: Any) -> None:
        if key in self.down:
            self._count(key)
            del self.down[key]
        STORE_UP.set(0 if self.down else 1)

    def opened(self, event: monitoring.ServerOpeningEvent) -> None:
        pass

    def started(self, event: monitoring.ServerHeartbeatStartedEvent) -> None:
        pass

    def succeeded(self, event: monitoring.ServerHeartbeatSucceededEvent) -> None:
        pass


REACHABILITY = StoreReachability()
D = TypeVar("D", bound=Document)


def make_client(url: str, name: str = "healthmate", **kwargs: object) -> AsyncMongoClient:
    """A client whose writes are acknowledged only once durable (majority + journal), its commands
    counted in ``COMMANDS`` and its reachability followed by ``REACHABILITY``. Its name in the store's logs is
    ``name`` unless the URL gives one (``appName=``: an operator telling processes apart)."""
    listeners = [COMMANDS, REACHABILITY, *kwargs.pop("event_listeners", ())]  # type: ignore[misc]
    opts: dict[str, object] = {
        "event_listeners": listeners,
        "tz_aware": True,
        "w": "majority",
        "journal": True,
        "serverSelectionTimeoutMS": 5000,
    }
    if not any(key.lower() == "appname" for key in parse_qs(urlsplit(url).query)):
        opts["appname"] = name
    opts.update(kwargs)
    return AsyncMongoClient(url, **opts)


# Connections of urgent work's own client, kept open: a crisis reading sends four commands at once (itself and
# the alert's three lookups; five with its access record, which used to go alongside and waited for one of four),
# and two crisis readings at once should not wait for each other's.
URGENT_POOL = 6


class UrgentLane:
    """Urgent work's own client beside each main one (``HEALTHMATE_URGENT_FIRST``): a crisis reading and the alert
    it raises use its few connections, kept open (``minPoolSize``), so they never wait for a connection behind bulk
    work, nor for a new one to be opened and authenticated (80-150 ms each in a 400-patient ``rush`` step, while
    bulk work had the main pool growing from 46 to 58 connections). A collection whose client has no lane (the
    setting off) is used as it is."""

    def __init__(self) -> None:
        # id of a main client -> its lane (by identity: two clients of the same store compare equal)
        self.clients: dict[int, AsyncMongoClient[Any]] = {}

    async def open(self, main: AsyncMongoClient[Any], url: str, **options: Any) -> None:
        """The lane of ``main``, its connections opened and authenticated now (the first alert would pay for it)."""
        lane = make_client(url, **{**options, "maxPoolSize": URGENT_POOL, "minPoolSize": URGENT_POOL,
                                   "appname": "healthmate-urgent"})
        try:
            await asyncio.gather(*(lane.admin.command("ping") for _ in range(URGENT_POOL)))
        except BaseException:
            await lane.close()
            raise
        self.clients[id(main)] = lane

    async def close(self, main: AsyncMongoClient[Any]) -> None:
        if (lane := self.clients.pop(id(main), None)) is not None:
            await lane.close()

    def __call__(self, collection: AsyncCollection[Any]) -> AsyncCollection[Any]:
        """The same collection on the lane of its client."""
        lane = self.clients.get(id(collection.database.client))
        if lane is None:
            return collection
        return lane[collection.database.name].get_collection(collection.name, codec_options=collection.codec_options)

    async def find(self, document: type[D], query: dict[str, Any], sort: list[tuple[str, int]] | None = None,
                   ) -> list[D]:
        """``document``'s matches of ``query``, read on the lane."""
        cursor = self(document.get_pymongo_collection()).find(query, sort=sort)
        return [parse_obj(document, doc) async for doc in cursor]  # type: ignore[misc]


URGENT_LANE = UrgentLane()


async def init_documents(client: AsyncMongoClient, db_name: str, documents: list[type[Document]]) -> None:
    """Beanie on ``documents`` (each concern's ``DOCUMENTS``, gathered by ``server.app``) and infra's own
    (migrations, throttle windows), indexes created."""
    await init_beanie(database=client[db_name], document_models=[*documents, MigrationRecord, ThrottleWindow])


_INDEXED: set[tuple[int, str, str]] = set()  # (client, database, bucket) whose GridFS indexes this process made


class GridBucket(AsyncGridFSBucket):
    """GridFS whose uploads skip pymongo's check for the bucket's indexes: before every upload it reads one file
    and one chunk (``find_one({})``), which the embedded store answers by copying every document of the
    collection, every 255 KB chunk, under its lock (an upload of 1 MB took 20 ms with 5 such files stored, 147 ms
    with 200). ``ready`` creates the indexes instead, once per process and bucket; await it before uploading."""

    def __init__(self, database: AsyncDatabase[Any], bucket_name: str, **options: Any) -> None:
        super().__init__(database, bucket_name=bucket_name, **options)
        self.database, self.name = database, bucket_name

    async def ready(self) -> GridBucket:
        key = (id(self.database.client), self.database.name, self.name)
        if key not in _INDEXED:
            await self.database[f"{self.name}.files"].create_index([("filename", 1), ("uploadDate", 1)])
            await self.database[f"{self.name}.chunks"].create_index([("files_id", 1), ("n", 1)], unique=True)
            _INDEXED.add(key)
        return self

    def open_upload_stream(self, *args: Any, **kwargs: Any) -> AsyncGridIn:
        return _indexed(super().open_upload_stream(*args, **kwargs))

    def open_upload_stream_with_id(self, *args: Any, **kwargs: Any) -> AsyncGridIn:
        return _indexed(super().open_upload_stream_with_id(*args, **kwargs))


def _indexed(grid_in: AsyncGridIn) -> AsyncGridIn:
    object.__setattr__(grid_in, "_ensured_index", True)  # pymongo's own mark that the indexes are there
    return grid_in
