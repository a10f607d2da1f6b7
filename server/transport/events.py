"""The event pipeline every transport runs an event through (Socket.IO, the MQTT bridge, a device's
WebRTC data channel): look the event up, rate-limit the sender, check its role, validate the payload,
run the handler and wrap its outcome in the ack envelope ``{"ok": true, "data": ...}`` or
``{"ok": false, "error": {code, message, details}}``. An event therefore behaves the same on each."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from server.core.config import Settings
from server.core.errors import ApiError, as_api_error, error_body
from server.core.identity import Client, Principal
from server.infra.metrics import EVENTS, OTHER, child, outcome
from server.infra.ratelimit import TokenBuckets

log = logging.getLogger(__name__)
USER_ROLES = frozenset({"patient", "caregiver", "clinician"})
DEVICE_ROLES = frozenset({"device"})


@dataclass(frozen=True)
class EventContext:
    principal: Principal
    sid: str
    client: Client


Handler = Callable[[EventContext, Any], Awaitable[Any]]


@dataclass(frozen=True)
class Event:
    handler: Handler
    model: type[BaseModel] | None
    roles: frozenset[str]
    reply: Any = None  # the type of the ack's ``data`` (a Wire model, a list of one, ...): the contract


@dataclass(frozen=True)
class Pushed:
    """An event the server pushes: its payload's type, and what it is for (the docs' summary)."""

    model: Any
    summary: str


class EventRouter:
    """The table of events and the pipeline that runs them."""

    def __init__(self, settings: Settings) -> None:
        self.events: dict[str, Event] = {}
        self.pushed: dict[str, Pushed] = {}
        self.conn_limit = TokenBuckets(settings.event_rate_per_s, settings.event_burst)
        self.user_limit = TokenBuckets(settings.user_event_rate_per_s, settings.user_event_burst)
        self.on_register: list[Callable[[str], None]] = []

    def event(self, name: str, model: type[BaseModel] | None = None,
              roles: frozenset[str] = USER_ROLES, reply: Any = None) -> Callable[[Handler], Handler]:
        """Register ``handler(ctx, payload)`` for event ``name``; ``payload`` is validated by ``model``.
        Only principals with one of ``roles`` may send it (users by default, not devices). ``reply`` is the
        type of the ack's ``data`` and the handler's docstring says what the event does: both go into
        docs/asyncapi.yaml (``healthmate docs``)."""

        def register(handler: Handler) -> Handler:
            if name in self.events:
                raise ValueError(f"event {name} registered twice")
            self.events[name] = Event(handler, model, roles, reply)
            for hook in self.on_register:
                hook(name)
            return handler

        return register

    def push(self, name: str, model: Any, summary: str) -> None:
        """Declare an event the server pushes to clients, with its payload's type (for the documents)."""
        if name in self.pushed:
            raise ValueError(f"pushed event {name} declared twice")
        self.pushed[name] = Pushed(model, summary)

    async def handle(self, name: str, principal: Principal, sid: str, client: Client, data: Any) -> dict[str, Any]:
        """Run event ``name`` for ``principal`` on connection ``sid`` and return its ack, counted in ``EVENTS``
        by name and outcome."""
        event = self.events.get(name)
        if event is None:
            return unknown_event(name)
        ack = await self._run(event, name, principal, sid, client, data)
        child(EVENTS, name, outcome(ack)).inc()
        return ack

    async def _run(self, event: Event, name: str, principal: Principal, sid: str, client: Client,
                   data: Any) -> dict[str, Any]:
        wait = self.conn_limit.take(sid) or self.user_limit.take(
            principal.sid if principal.is_device else str(principal.user_id))
        if wait:
            return {"ok": False, **error_body("rate_limited", "Too many events; slow down",
                                              {"retry_after_s": round(wait, 2)})}
        if principal.role not in event.roles:
            return {"ok": False, **error_body("forbidden", f"{name} is not for a {principal.role}")}
        try:
            if event.model is not None:
                payload = event.model.model_validate({} if data is None else data)
            elif data not in (None, {}):
                raise ApiError("invalid_payload", f"{name} takes no payload", 422)
            else:
                payload = None
            return {"ok": True, "data": await event.handler(EventContext(principal, sid, client), payload)}
        except Exception as exc:
            return {"ok": False, **as_api_error(exc, f"event {name}").body()}

    def forget(self, sid: str) -> None:
        """A connection ended: its rate-limit bucket goes."""
        self.conn_limit.forget(sid)


def unknown_event(event: Any) -> dict[str, Any]:
    """The ack of an event no handler is registered for, counted as ``other``: the name is the client's."""
    child(EVENTS, OTHER, "unknown_event").inc()
    return {"ok": False, **error_body("unknown_event", "No such event", {"event": str(event)[:64]})}
