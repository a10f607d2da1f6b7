"""Liveness (``/healthz``: the process answers), readiness (``/readyz``: the store and, when
configured, Redis answer within a second), and ``sys:ping`` over Socket.IO (round-trip time and the
server clock, for clients and devices measuring latency and clock offset)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from server.core.errors import error_body
from server.core.wire import Wire
from server.infra.store import COMMANDS
from server.transport.events import DEVICE_ROLES, USER_ROLES, EventContext
from server.transport.mount import Mount

if TYPE_CHECKING:
    from server.lifecycle import Server


class PingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    t: float | None = Field(None, allow_inf_nan=False)  # the client's clock, echoed back
    note: str | None = Field(None, max_length=100)


class Pong(Wire):
    t: float | None = Field(description="The client's clock, echoed")
    server_time_ms: float = Field(description="The server's clock (Unix time, ms)")


class Health(Wire):
    status: Literal["ok"]
    process: str = Field(description="Which server process answered (pid-random)")
    store_commands: int = Field(description="Store commands this process has sent since it started")


class Ready(Wire):
    status: Literal["ready"]
    checks: dict[str, str]


async def ping(ctx: EventContext, body: PingIn) -> dict[str, Any]:
    """Echoes `t` with the server's clock in ms, for round-trip time and clock offset."""
    return {"t": body.t, "server_time_ms": round(time.time() * 1000, 3)}


async def _check(probe: Any) -> str:
    try:
        await asyncio.wait_for(probe, 1.0)
        return "ok"
    except Exception as exc:
        return f"down: {type(exc).__name__}"


def mount(m: Mount, server: Server) -> None:
    m.events.event("sys:ping", PingIn, roles=USER_ROLES | DEVICE_ROLES, reply=Pong)(ping)

    async def healthz(request: web.Request) -> web.Response:
        """Liveness: the process answers.

        ``process`` tells the workers of a multi-process server apart; ``store_commands``: the
        store commands this process has sent since it started."""
        return web.json_response({"status": "ok", "process": server.realtime.process_id,
                                  "store_commands": COMMANDS.total})

    async def readyz(request: web.Request) -> web.Response:
        """Readiness: the store and (if configured) Redis answer within a second; else 503 `not_ready`."""
        checks: dict[str, str] = {}
        if server.mongo is None:
            checks["store"] = "down: not connected"
        elif server.stores is not None and (down := [s for s in server.stores.embedded if not s.healthy]):
            checks["store"] = f"down: embedded store process is not running ({down[0].data_dir})"
        else:
            checks["store"] = await _check(server.mongo.admin.command("ping"))
            if server.stores is not None and server.stores.bulk is not None and checks["store"] == "ok":
                checks["store"] = await _check(server.stores.bulk.admin.command("ping"))
        if server.redis is not None:
            checks["redis"] = await _check(server.redis.ping())
        if all(v == "ok" for v in checks.values()):
            return web.json_response({"status": "ready", "checks": checks})
        return web.json_response(error_body("not_ready", "A dependency is unavailable", {"checks": checks}),
                                 status=503)

    m.route("GET", "/healthz", healthz, Health, public=True)
    m.route("GET", "/readyz", readyz, Ready, public=True)
