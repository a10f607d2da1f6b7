"""Every query the project's code sends while the tests run, by the shape of its filter (PyMongo command
monitoring, registered by tests/conftest.py before any client exists), so that
``tests/test_query_plans.py`` can have the embedded store plan each one: a filter no index covers reads more than
it returns, and more as the data grows (the open-alert check read all of the patient's past alerts until an index
covered it, found by timing the store by hand)."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from pymongo import monitoring

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tuple(f"{ROOT / part}/" for part in ("server", "devices", "signaling", "media"))
TESTS = f"{ROOT / 'tests'}/"


@dataclass
class Query:
    """One filter shape on one collection: where the project sent it first (``functions``: the innermost function
    of the project's code and its caller, ``site``: with their lines), and that command's filter and sort."""

    collection: str
    filter: dict[str, Any]
    sort: dict[str, Any] | None
    functions: tuple[str, ...]
    site: str


def shape(value: Any) -> Any:
    """A filter with its values blanked and its fields and operators kept: ``{"a": {"$in": "?"}}``."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [shape(v) for v in value]  # the clauses of $and / $or
    return "?"


def filters_of(name: str, command: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """The filters (and sorts) a read or write command selects documents with."""
    if name == "find":
        return [(command.get("filter") or {}, command.get("sort"))]
    if name in ("count", "distinct"):
        return [(command.get("query") or {}, None)]
    if name == "findAndModify":
        return [(command.get("query") or {}, command.get("sort"))]
    if name == "aggregate":
        head = (command.get("pipeline") or [{}])[0]
        return [(head.get("$match", {}) if isinstance(head, dict) else {}, None)]
    if name == "update":
        return [(u.get("q") or {}, None) for u in command.get("updates", ())]
    if name == "delete":
        return [(d.get("q") or {}, None) for d in command.get("deletes", ())]
    return []


def project_frames() -> list[FrameType]:
    """The frames of the project's code on the way to this command, innermost first; none when the innermost
    frame outside the libraries is a test's own (a test reading the store directly)."""
    frames = []
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if path.startswith(PROJECT):
            frames.append(frame)
        elif path.startswith(TESTS):
            break
        frame = frame.f_back
    return frames


def where(frame: FrameType, line: bool = False) -> str:
    path = frame.f_code.co_filename[len(str(ROOT)) + 1:]
    return f"{path}{f':{frame.f_lineno}' if line else ''} ({frame.f_code.co_name})"


T = TypeVar("T")


@contextlib.contextmanager
def _listening(taps: list[list[T]]) -> Iterator[list[T]]:
    """A list that gets what is recorded into ``taps`` while the block runs."""
    seen: list[T] = []
    taps.append(seen)
    try:
        yield seen
    finally:
        taps.remove(seen)


class QueryRecorder(monitoring.CommandListener):
    def __init__(self) -> None:
        self.queries: dict[tuple[str, str], Query] = {}
        self.taps: list[list[tuple[str, dict[str, Any]]]] = []
        self.reply_taps: list[list[tuple[str, int]]] = []

    def tap(self) -> contextlib.AbstractContextManager[list[tuple[str, dict[str, Any]]]]:
        """Every (collection, filter) sent meanwhile, by anyone."""
        return _listening(self.taps)

    def replies(self) -> contextlib.AbstractContextManager[list[tuple[str, int]]]:
        """(collection, documents) of every batch of documents the store sent meanwhile, to anyone."""
        return _listening(self.reply_taps)

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        found = filters_of(event.command_name, event.command)
        if not found:
            return
        collection = event.command[event.command_name]
        for seen in self.taps:
            seen.extend((collection, filter_) for filter_, _ in found)
        frames = None
        for filter_, sort in found:
            key = (collection, json.dumps([shape(filter_), list(sort or {})], sort_keys=True))
            if key in self.queries:
                continue
            frames = frames if frames is not None else project_frames()
            if not frames:
                return
            site = " < ".join(where(f, line=True) for f in frames[:2])
            self.queries[key] = Query(collection, filter_, sort, tuple(where(f) for f in frames[:2]), site)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        cursor = event.reply.get("cursor")
        if self.reply_taps and isinstance(cursor, dict):
            batch = (cursor["ns"].split(".", 1)[1], len(cursor.get("firstBatch", cursor.get("nextBatch", ()))))
            for seen in self.reply_taps:
                seen.append(batch)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


QUERIES = QueryRecorder()
