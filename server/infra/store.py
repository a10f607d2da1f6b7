"""Connection to MongoDB (or the embedded store) and Beanie initialisation."""

from __future__ import annotations

from beanie import Document, init_beanie
from pymongo import AsyncMongoClient

from server.infra.migrations import MigrationRecord


def make_client(url: str, **kwargs: object) -> AsyncMongoClient:
    """A client whose writes are acknowledged only once durable (majority + journal)."""
    opts: dict[str, object] = {
        "tz_aware": True,
        "w": "majority",
        "journal": True,
        "serverSelectionTimeoutMS": 5000,
        "appname": "healthmate",
    }
    opts.update(kwargs)
    return AsyncMongoClient(url, **opts)


async def init_documents(client: AsyncMongoClient, db_name: str, documents: list[type[Document]]) -> None:
    """Beanie on ``documents`` (each concern's ``DOCUMENTS``, gathered by ``server.app``), indexes created."""
    await init_beanie(database=client[db_name], document_models=[*documents, MigrationRecord])
