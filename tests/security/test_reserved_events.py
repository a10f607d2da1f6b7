"""Socket.IO's reserved names are not events a client may send: a packet 42["connect", ...] (or
"disconnect", "connect_error") would otherwise run the server's own connection handlers with the client's
payload as their arguments (re-authenticating the socket as whoever's token it carries, or tearing down
its state while it stays connected). Each is answered unknown_event and changes nothing."""

from __future__ import annotations

import json

import pytest

from tests.helpers import Api, raw_call, raw_socket


@pytest.mark.parametrize("name", ["connect", "disconnect", "connect_error", "message"])
async def test_reserved_names_are_refused_and_change_nothing(api: Api, name: str) -> None:
    me, other = await api.register("patient"), await api.register("patient")
    ws = await raw_socket(api, {"token": me.access_token})
    try:
        forged = json.dumps([{"REMOTE_ADDR": "10.0.0.1"}, {"token": other.access_token}])[1:-1]
        reply = await raw_call(ws, 1, f'"{name}", {forged}')
        assert reply["ok"] is False and reply["error"]["code"] == "unknown_event", reply
        # Still connected, still the same user: not signed in as the other one, not torn down.
        listed = await raw_call(ws, 2, '"patients:list"')
        assert listed["ok"] is True and [p["id"] for p in listed["data"]] == [me.id], listed
    finally:
        await ws.close()
