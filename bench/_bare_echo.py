"""A bare python-socketio server on aiohttp with one acked handler answering as the project's
``sys:ping`` does (the client's ``t`` and the server clock, in the uniform ack), with the same JSON
codec (orjson, ``server.fastjson``) as the project, on uvloop (the fastest loop; the project's puts urgent work
first, ``server.core.urgent_loop``): what a user would get from the library alone (bench/events.py compares the
project's authenticated, validated path with it)."""

import sys
import time
from typing import Any

import socketio
import uvloop
from aiohttp import web

from server.infra import fastjson

sio = socketio.AsyncServer(async_mode="aiohttp", json=fastjson)
app = web.Application()
sio.attach(app)


@sio.on("echo")
async def echo(sid: str, data: Any) -> dict[str, Any]:
    t = data.get("t") if isinstance(data, dict) else None
    return {"ok": True, "data": {"t": t, "server_time_ms": round(time.time() * 1000, 3)}}


if __name__ == "__main__":
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None,
                loop=uvloop.new_event_loop())
