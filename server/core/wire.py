"""The base of every model of what the server sends (acks' data, pushed events, REST responses): every
field it sends is declared, so the documents generated from these models (``healthmate docs``) say all a
client receives, and the tests' contract check refuses a field that is not declared."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from server.core.error_codes import ERRORS

T = TypeVar("T")
Time = datetime  # ISO 8601 in UTC with a Z, milliseconds: 2026-11-25T10:00:00.000Z
ErrorCodeName = Literal[tuple(ERRORS)]  # type: ignore[valid-type]


class Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Items(Wire, Generic[T]):
    items: list[T]


class Page(Wire, Generic[T]):
    """Newest first; give ``next_cursor`` back as ``before`` for the next page (null: the last page)."""

    items: list[T]
    next_cursor: str | None


class ErrorInfo(Wire):
    code: ErrorCodeName  # one of docs' error table (server/core/error_codes.py)
    message: str
    details: dict[str, Any]


class ErrorBody(Wire):
    """Every REST refusal."""

    error: ErrorInfo


class ErrorAck(Wire):
    """Every refused event's ack."""

    ok: Literal[False]
    error: ErrorInfo


class Nothing(Wire):
    """No data: ``{}``."""
