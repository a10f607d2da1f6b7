"""REST plumbing: the uniform error middleware, JSON bodies validated by pydantic,
the caller's identity, cursor pagination, and serving a GridFS file (with byte ranges)."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from aiohttp import web
from beanie import Document, PydanticObjectId
from beanie.odm.queries.find import FindMany
from bson import ObjectId
from bson.errors import InvalidId
from gridfs.asynchronous.grid_file import AsyncGridOut
from pydantic import BaseModel, Field, ValidationError

from server.core.errors import ApiError, as_api_error, error_body, validation_error
from server.core.identity import Client, Principal
from server.infra.metrics import HTTP_REQUESTS, OTHER, child

log = logging.getLogger(__name__)
PRINCIPAL = web.RequestKey("principal", Principal)
M = TypeVar("M", bound=BaseModel)
MAX_PAGE = 200


def error_response(err: ApiError) -> web.Response:
    return web.json_response(err.body(), status=err.status, headers=err.headers)


_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}


@web.middleware
async def error_middleware(request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        return web.json_response(error_body(code, exc.reason), status=exc.status,
                                 headers={k: v for k, v in exc.headers.items() if k.lower() in {"allow"}})
    except Exception as exc:
        return error_response(as_api_error(exc, f"{request.method} {request.path}"))


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@web.middleware
async def count_requests(request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
    """Count every request in ``HTTP_REQUESTS`` by method, the pattern of the route it matched (never the raw
    URL: ``/api/patients/{patient_id}``, ``unmatched`` if none) and the status answered. Outermost, so it
    sees the status ``error_middleware`` turned an exception into."""
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        resource = request.match_info.route.resource
        child(HTTP_REQUESTS, request.method if request.method in _METHODS else OTHER,
              resource.canonical if resource is not None else "unmatched", str(status)).inc()


async def read_json(request: web.Request, model: type[M]) -> M:
    if request.content_type != "application/json":
        raise ApiError("unsupported_media_type", "Send a JSON body (Content-Type: application/json)", 415)
    try:
        data = await request.json(loads=json.loads)
    except web.HTTPRequestEntityTooLarge:
        raise ApiError("payload_too_large", "The request body is too large", 413) from None
    except (ValueError, UnicodeDecodeError):
        raise ApiError("invalid_json", "The body is not valid JSON", 400) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


@dataclass(frozen=True)
class RouteDoc:
    """A route's contract, for docs/openapi.yaml (``healthmate docs``): the JSON body it reads, its query
    parameters (a model's fields), what it answers with ``status`` (a Wire model or list of one; or
    ``media``, a content type that is not JSON), and whether it needs no access token. The handler's
    docstring is the summary (first line) and description."""

    handler: Callable[..., Any]
    reply: Any = None
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    status: int | tuple[int, ...] = 200  # a tuple: the reply comes with any of these
    public: bool = False
    media: str | None = None


class Rest:
    """What every REST handler needs of the transport, bound once when the routes are made: who the
    caller is (the bearer token) and where the request came from; and every route's contract."""

    def __init__(self, authenticate: Callable[[str], Awaitable[Principal]], trust_forwarded: bool) -> None:
        self._authenticate = authenticate
        self.trust_forwarded = trust_forwarded
        self.docs: dict[tuple[str, str], RouteDoc] = {}  # (METHOD, path) -> contract

    def client(self, request: web.Request) -> Client:
        return Client.of(request.remote, request.headers.get("X-Forwarded-For"), request.headers.get("User-Agent"),
                         self.trust_forwarded)

    async def principal(self, request: web.Request) -> Principal:
        cached = request.get(PRINCIPAL)
        if cached is not None:
            return cached
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError("unauthorized", "Send an access token: Authorization: Bearer <token>", 401)
        principal = await self._authenticate(token.strip())
        request[PRINCIPAL] = principal
        return principal


class PageQuery(BaseModel):
    """A page's query parameters (``page_params`` reads them)."""

    limit: int = Field(50, ge=1, le=MAX_PAGE, description="Items per page")
    before: str | None = Field(None, description="The previous page's next_cursor")


def page_params(request: web.Request) -> tuple[PydanticObjectId | None, int]:
    before_raw = request.query.get("before")
    try:
        limit = int(request.query.get("limit", "50"))
    except ValueError:
        raise ApiError("invalid_query", "limit must be a whole number", 422, {"field": "limit"}) from None
    if not 1 <= limit <= MAX_PAGE:
        raise ApiError("invalid_query", f"limit must be between 1 and {MAX_PAGE}", 422, {"field": "limit"})
    before = None
    if before_raw:
        try:
            before = PydanticObjectId(before_raw)
        except (InvalidId, TypeError):
            raise ApiError("invalid_query", "before is not a cursor this API returned", 422,
                           {"field": "before"}) from None
    return before, limit


# The spans a page is looked for in, back from its start, each further one read only when those before held less
# than a page (None: the rest of the history). The embedded store sorts every match of a filter before it applies the
# limit, so a page of a long history read all of it, an index covering the filter or not (a user with 8,000
# notifications: 205 ms a page, 2.4 ms over the last week on an index leading with the filter's fields and ``_id``).
PAGE_SPANS = (timedelta(days=7), timedelta(days=70), timedelta(days=700), None)


# Documents a reply of the store carries when the server checks what a span returns (``keep``): a caregiver whose
# received alerts are mostly about former patients holds one batch at a time, not their whole history.
KEEP_BATCH = 100


async def _first(query: FindMany[Any], need: int, keep: Callable[[Any], bool] | None) -> list[Any]:
    """The first ``need`` documents of ``query`` that ``keep`` keeps (all do without it), read no further."""
    if keep is None:
        return await query.limit(need).to_list()
    kept: list[Any] = []
    try:
        async for item in query:
            if keep(item):
                kept.append(item)
                if len(kept) == need:
                    break
    finally:
        if query.cursor is not None:  # (the rest of the span is not read: the store's cursor is closed)
            await query.cursor.close()
    return kept


async def cursor_page(doc: type[Document], condition: Any, before: PydanticObjectId | None, limit: int,
                      to_json: Callable[[Any], dict[str, Any]],
                      keep: Callable[[Any], bool] | None = None) -> dict[str, Any]:
    """Newest first, by ``_id``; ``next_cursor`` is given back as ``before`` for the next page. ``condition`` a
    list: the documents matching any of them, one query each (an ``$or`` reads the whole collection on the
    embedded store), the page taken from their pages merged. The page is looked for in the last week before its
    start first, then in the time before it (``PAGE_SPANS``, each slice of ``_id`` read once): what a slice holds is
    newer than all that is further back. ``keep``: what the filter leaves to be checked here (a field whose values
    an index cannot range through); a slice is then read ``KEEP_BATCH`` documents at a time, until the page has
    what it needs."""
    top = before.generation_time if before is not None else datetime.now(UTC)
    found: dict[Any, Any] = {}
    upper: ObjectId | None = before  # the slice's end (excluded): the start of the one read before it
    batches = {"batch_size": KEEP_BATCH} if keep else {}
    for span in PAGE_SPANS:
        lower = ObjectId.from_datetime(top - span) if span is not None else None
        ids = {**({"$lt": upper} if upper is not None else {}), **({"$gte": lower} if lower is not None else {})}
        need = limit + 1 - len(found)
        for alternative in condition if isinstance(condition, list) else [condition]:
            query = doc.find(alternative, *([{"_id": ids}] if ids else []), **batches).sort(-doc.id)
            found.update((i.id, i) for i in await _first(query, need, keep))
        if len(found) > limit:
            break
        upper = lower
    items = sorted(found.values(), key=lambda i: i.id, reverse=True)[:limit + 1]
    more = len(items) > limit
    items = items[:limit]
    return {"items": [to_json(i) for i in items], "next_cursor": str(items[-1].id) if more else None}


async def send_grid_file(request: web.Request, grid_out: AsyncGridOut, headers: dict[str, str]) -> web.StreamResponse:
    """Stream a stored file; one ``Range: bytes=...`` is honoured (206), as players seeking in a
    recording ask for, and a range outside the file is refused (416)."""
    length = grid_out.length
    try:
        rng = request.http_range
    except ValueError:
        rng = slice(None, None)
    start, stop, status = 0, length, 200
    if rng.start is not None or rng.stop is not None:
        start = max(length + rng.start, 0) if rng.start is not None and rng.start < 0 else (rng.start or 0)
        stop = min(rng.stop, length) if rng.stop is not None else length
        if start >= stop:
            raise ApiError("range_not_satisfiable", "The requested range is outside the file", 416,
                           {"length": length})
        status = 206
        headers = {**headers, "Content-Range": f"bytes {start}-{stop - 1}/{length}"}
        await grid_out.seek(start)
    response = web.StreamResponse(status=status, headers={
        **headers, "Content-Length": str(stop - start), "Accept-Ranges": "bytes"})
    await response.prepare(request)
    left = stop - start
    while left > 0 and (chunk := await grid_out.readchunk()):
        await response.write(chunk[:left])
        left -= len(chunk)
    await response.write_eof()
    return response
