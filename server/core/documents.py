"""The base of every stored document and the time helpers every concern shares."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

from beanie import Document
from beanie.odm.queries.find import FindMany, FindOne
from pymongo import UpdateMany
from pymongo.asynchronous.collection import AsyncCollection

T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(UTC)


def one_filter(query: dict[str, Any]) -> dict[str, Any]:
    """``{"$and": [a, b, ...]}`` as the one filter ``{**a, **b, ...}`` when no field repeats (the same query).
    Beanie joins the conditions of ``find(A, B)`` with ``$and``, and the embedded store plans no index through
    ``$and``: every such query read the whole collection (20,000 documents: 270 ms against 0.7 ms)."""
    parts = query.get("$and") if len(query) == 1 else None
    if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
        return query
    out: dict[str, Any] = {}
    for part in map(one_filter, parts):
        if out.keys() & part.keys():
            return query
        out.update(part)
    return out


class _OneFilter:
    def get_filter_query(self) -> dict[str, Any]:
        return one_filter(super().get_filter_query())  # type: ignore[misc]


class OneFilterFindOne(_OneFilter, FindOne):  # type: ignore[misc]
    pass


class OneFilterFindMany(_OneFilter, FindMany):  # type: ignore[misc]
    pass


class StoredDocument(Document):
    """Base of every stored document: Beanie queries of several conditions go to the store as one filter."""

    _find_one_query_class: ClassVar[type] = OneFilterFindOne
    _find_many_query_class: ClassVar[type] = OneFilterFindMany


class VersionedDocument(StoredDocument):
    """Base of every stored document: the schema version it was written with."""

    schema_version: int = 1


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def passed(now: datetime, *, inclusive: bool = False) -> dict[str, datetime]:
    """The query of a time field that may be null ("a lease that ran out"): before ``now`` and not null. Without
    the lower bound the embedded store's index range starts at the nulls and reads every document whose field is
    null on each poll: every reminded dose, for a lease that is null once its work is done (10,000 reminded doses:
    0.3-0.4 s of the store's CPU per poll, against 1 ms with it)."""
    return {"$gte": EPOCH, "$lte" if inclusive else "$lt": now}


IN_CHUNK = 50  # ids per {"$in": ...} query


def in_chunks(ids: Iterable[T], size: int = IN_CHUNK) -> Iterator[list[T]]:
    """``ids`` in slices for ``{"$in": ...}`` queries, one command each. The embedded store compares each
    candidate document with every listed id (B² for B ids): the medicine boxes of a 500-dose batch looked up in one
    query held the store's one core for 300-400 ms in the ``rush`` bench's 08:00 burst, and every other command
    (an alert's among them) waited; in slices of 50 it is a tenth of the work."""
    ids = list(ids)
    for i in range(0, len(ids), size):
        yield ids[i:i + size]


def by_ids(ids: Iterable[Any], query: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The documents ``ids`` that also match ``query``, as queries of ``IN_CHUNK`` ids each, ``_id`` first: the
    embedded store looks each listed ``_id`` up only when ``_id`` is the filter's first field, and reads the whole
    collection for an ``_id`` range (20,000 doses: 530 ms to update a batch of 100 by its range, 26 ms by its ids)."""
    return [{"_id": {"$in": chunk}, **(query or {})} for chunk in in_chunks(ids)]


def claimed_by(owner: str, token: str, ids: Iterable[Any]) -> list[dict[str, Any]]:
    """The queries of the documents ``ids`` claimed under ``token`` (in the field ``owner``). Owner fields are not
    indexed: each index costs every update of a document (on the embedded store about 0.1 ms per index and updated
    dose, whether or not the indexed fields changed), and a claim knows its documents."""
    return by_ids(ids, {owner: token})


async def update_each(collection: AsyncCollection[Any], queries: list[dict[str, Any]],
                      update: dict[str, Any]) -> int:
    """``update`` on the matches of every query, in one command (one statement a query); how many changed."""
    if not queries:
        return 0
    return (await collection.bulk_write([UpdateMany(q, update) for q in queries], ordered=False)).modified_count


async def find_each(collection: AsyncCollection[Any], queries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The matches of every query, one command each, all sent at once (each waits its turn in a busy store)."""
    found = await asyncio.gather(*(collection.find(q).to_list(None) for q in queries))
    return [doc for docs in found for doc in docs]


def aware(dt: datetime) -> datetime:
    """Datetimes are stored as UTC; a naive one read back is UTC."""
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def iso(dt: datetime | None) -> str | None:
    """ISO 8601 UTC with a ``Z``."""
    if dt is None:
        return None
    return aware(dt).astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
