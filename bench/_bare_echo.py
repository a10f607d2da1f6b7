"""A bare python-socketio server on aiohttp with one acked echo handler: what a user would get from
the library alone (bench/events.py compares the project's authenticated, validated path with it)."""

import sys

import socketio
from aiohttp import web

sio = socketio.AsyncServer(async_mode="aiohttp")
app = web.Application()
sio.attach(app)


@sio.on("echo")
async def echo(sid: str, data: object) -> dict[str, object]:
    return {"ok": True, "data": data}


if __name__ == "__main__":
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
