"""What a concern's ``api.py`` mounts its Socket.IO events and REST routes on, handed over once."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from server.transport.events import EventRouter
from server.transport.http import Rest
from server.transport.realtime import Realtime


@dataclass(frozen=True)
class Mount:
    events: EventRouter  # events.event(name, Model, roles)(handler)
    routes: web.UrlDispatcher  # routes.add_get(path, handler), handlers bound to their service once
    rest: Rest  # rest.principal(request), rest.client(request)
    realtime: Realtime  # connect/disconnect hooks, device sinks: the Socket.IO adapter itself
