"""The one error shape used by REST responses and Socket.IO acks:
``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError
from pymongo.errors import ConnectionFailure

from server.core.error_codes import ERRORS

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A refusal the client is told about. ``code`` is one of ``error_codes.ERRORS``; ``status``, the HTTP
    status REST answers with, is the code's own unless one of its other declared statuses is given."""

    def __init__(self, code: str, message: str, status: int | None = None, details: Any = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        declared = ERRORS.get(code)
        if declared is None:
            raise ValueError(f"error code {code!r} is not declared in server/core/error_codes.py")
        if status is not None and status not in declared.statuses:
            raise ValueError(f"error code {code!r} is declared with status {declared.statuses}, not {status}")
        self.code = code
        self.message = message
        self.status = declared.status if status is None else status
        self.details = details if details is not None else {}
        if code == "invalid_payload" and isinstance(self.details, dict) and "problems" not in self.details:
            # Every invalid_payload lists its problems, as the documents promise, whoever raised it.
            self.details = {**self.details, "problems": [
                {"field": str(self.details.get("field", "(body)")), "problem": message}]}
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.details)


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    if code not in ERRORS:
        raise ValueError(f"error code {code!r} is not declared in server/core/error_codes.py")
    return {"error": {"code": code, "message": message, "details": details if details is not None else {}}}


def validation_error(exc: ValidationError) -> ApiError:
    """Turn a pydantic error into a uniform one, without echoing the (possibly huge) input back."""
    problems = [
        {"field": ".".join(str(p) for p in e["loc"]) or "(body)", "problem": e["msg"]}
        for e in exc.errors(include_url=False, include_input=False)[:20]
    ]
    return ApiError("invalid_payload", "The request payload is not valid", 422, {"problems": problems})


def store_unavailable() -> ApiError:
    """The store did not answer: nothing was written; the client may retry."""
    return ApiError("store_unavailable", "The data store is unavailable right now; nothing was saved, retry shortly",
                    503, {"retry_after_s": 5}, headers={"Retry-After": "5"})


def not_found(what: str = "resource") -> ApiError:
    return ApiError("not_found", f"No such {what}", 404)


def forbidden(message: str = "You may not access this patient's data") -> ApiError:
    return ApiError("forbidden", message, 403)


def unauthorized(message: str = "Authentication required", code: str = "unauthorized") -> ApiError:
    return ApiError(code, message, 401)


def as_api_error(exc: Exception, where: str) -> ApiError:
    """What the client is told about any exception a handler raised (REST, Socket.IO and every other
    transport): its own refusal, invalid input, an unavailable store, or, logged with its traceback,
    ``internal`` without details."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ValidationError):
        return validation_error(exc)
    if isinstance(exc, ConnectionFailure):
        log.warning("store unavailable for %s: %s", where, exc)
        return store_unavailable()
    log.error("%s failed", where, exc_info=exc)
    return ApiError("internal", "Something went wrong on our side", 500)
