"""Connection to MongoDB (or the embedded store) and Beanie initialisation."""

from __future__ import annotations

from collections import Counter

from beanie import Document, init_beanie
from pymongo import AsyncMongoClient, monitoring

from server.infra.migrations import MigrationRecord
from server.infra.ratelimit import ThrottleWindow


class CommandCounter(monitoring.CommandListener):
    """Counts the store commands this process's clients send (PyMongo command monitoring); ``/healthz``
    reports the total, so that store work can be divided by the operations that caused it; ``by_name`` counts
    them per command (``insert``, ``find``, ...), for the per-action counts in docs/operations.md."""

    def __init__(self) -> None:
        self.total = 0
        self.by_name: Counter[str] = Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.total += 1
        self.by_name[event.command_name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


COMMANDS = CommandCounter()


def make_client(url: str, **kwargs: object) -> AsyncMongoClient:
    """A client whose writes are acknowledged only once durable (majority + journal), its commands
    counted in ``COMMANDS``."""
    listeners = [COMMANDS, *kwargs.pop("event_listeners", ())]  # type: ignore[misc]
    opts: dict[str, object] = {
        "event_listeners": listeners,
        "tz_aware": True,
        "w": "majority",
        "journal": True,
        "serverSelectionTimeoutMS": 5000,
        "appname": "healthmate",
    }
    opts.update(kwargs)
    return AsyncMongoClient(url, **opts)


async def init_documents(client: AsyncMongoClient, db_name: str, documents: list[type[Document]]) -> None:
    """Beanie on ``documents`` (each concern's ``DOCUMENTS``, gathered by ``server.app``) and infra's own
    (migrations, throttle windows), indexes created."""
    await init_beanie(database=client[db_name], document_models=[*documents, MigrationRecord, ThrottleWindow])
