"""What a concern's ``api.py`` mounts its Socket.IO events and REST routes on, handed over once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from server.transport.events import EventRouter
from server.transport.http import Rest, RouteDoc
from server.transport.realtime import Realtime


@dataclass(frozen=True)
class Mount:
    events: EventRouter  # events.event(name, Model, roles, reply=Reply)(handler); events.push(name, Model, summary)
    routes: web.UrlDispatcher  # the app's router (use route() below: a route with its contract)
    rest: Rest  # rest.principal(request), rest.client(request)
    realtime: Realtime  # connect/disconnect hooks, device sinks: the Socket.IO adapter itself

    def route(self, method: str, path: str, handler: Callable[..., Any], reply: Any = None, *,
              body: type[BaseModel] | None = None, query: type[BaseModel] | None = None,
              status: int | tuple[int, ...] = 200, public: bool = False, media: str | None = None) -> None:
        """Serve ``handler`` at ``method path`` and record its contract (``RouteDoc``) for the documents."""
        if method == "GET":
            self.routes.add_get(path, handler)  # and HEAD, as aiohttp's add_get does
        else:
            self.routes.add_route(method, path, handler)
        self.rest.docs[(method, path)] = RouteDoc(handler, reply, body, query, status, public, media)
