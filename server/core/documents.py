"""The base of every stored document and the time helpers every concern shares."""

from __future__ import annotations

from datetime import UTC, datetime

from beanie import Document


def utcnow() -> datetime:
    return datetime.now(UTC)


class VersionedDocument(Document):
    """Base of every stored document: the schema version it was written with."""

    schema_version: int = 1


def aware(dt: datetime) -> datetime:
    """Datetimes are stored as UTC; a naive one read back is UTC."""
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def iso(dt: datetime | None) -> str | None:
    """ISO 8601 UTC with a ``Z``."""
    if dt is None:
        return None
    return aware(dt).astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
