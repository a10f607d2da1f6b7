"""The Socket.IO managers' room index (``server/transport/rooms.py``): a socket that leaves is taken out of
exactly its rooms, without walking every room of the namespace, in one process and across two sharing
Redis; whoever is still connected keeps receiving; once everyone has left nothing of them is kept."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import socketio

from server.app import SERVER, create_app
from server.transport.rooms import Manager, RedisManager
from tests.alert_clients import crisis
from tests.conftest import make_settings
from tests.helpers import Api

NS = "/"


def scanned(manager: Any, sid: str) -> set[str]:
    """The rooms holding ``sid``, found the slow way (every room of the namespace tested)."""
    return {room for room, members in manager.rooms.get(NS, {}).items() if room is not None and sid in members}


async def gone(manager: Any, sid: str) -> None:
    for _ in range(200):
        if sid not in manager.rooms.get(NS, {}).get(None, {}):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{sid} still connected")


@pytest.fixture(params=["one process", "two processes sharing Redis"])
async def servers(request: pytest.FixtureRequest, store: Any, tmp_path: Path,
                  aiohttp_server: Any) -> Any:
    """(where the patient acts, where the sockets under test are): the same server, or two."""
    overrides = {"redis_url": request.getfixturevalue("redis_url")} if "Redis" in request.param else {}
    settings = make_settings(store.url, tmp_path, **overrides)
    a = await aiohttp_server(create_app(settings))
    b = await aiohttp_server(create_app(settings)) if overrides else a
    async with Api.of(a) as api_a, Api.of(b) as api_b:
        yield api_a, api_b


async def test_a_socket_that_leaves_leaves_exactly_its_rooms_and_the_others_still_hear(servers: Any) -> None:
    api_a, api_b = servers
    patient, carer = await api_a.register("patient"), await api_a.register("caregiver")
    await api_a.link(patient, carer)
    manager = api_b.app[SERVER].realtime.sio.manager
    assert isinstance(manager, RedisManager if api_a.app is not api_b.app else Manager)
    leaving, staying, watching = (await api_b.socket(patient), await api_b.socket(patient),
                                  await api_b.socket(carer))
    sid = leaving.client.get_sid(NS)
    assert set(manager.get_rooms(sid, NS)) == scanned(manager, sid)
    assert {f"user:{patient.id}", f"patient:{patient.id}", sid} <= scanned(manager, sid)

    await leaving.close()
    await gone(manager, sid)
    assert scanned(manager, sid) == set() and sid not in manager.rooms_of.get(NS, {})
    for sock in (staying, watching):  # the rooms they share with it are still theirs
        assert {f"patient:{patient.id}"} <= set(manager.get_rooms(sock.client.get_sid(NS), NS))

    cuff = await api_a.socket(patient)
    reading = await cuff.ok("bp:add", crisis())
    for sock in (staying, watching):
        (heard,) = await sock.events.wait("bp:new")
        assert heard["id"] == reading["id"]
    (alert,) = await watching.events.wait("alert:new")
    assert alert["data"]["reading_id"] == reading["id"]

    sids = [s.client.get_sid(NS) for s in (staying, watching)]
    for sock in (staying, watching):
        await sock.close()
    for left in sids:
        await gone(manager, left)
        assert scanned(manager, left) == set()
    assert manager.rooms_of.get(NS, {}).keys().isdisjoint([sid, *sids])


class Unwalkable(dict):  # type: ignore[type-arg]
    """A namespace's rooms that refuse to be walked: only lookups by name are allowed."""

    def items(self) -> Any:
        raise AssertionError("walked every room of the namespace")

    def copy(self) -> Any:
        raise AssertionError("copied every room of the namespace")

    def __iter__(self) -> Any:
        raise AssertionError("walked every room of the namespace")


async def test_a_disconnect_does_not_walk_every_room_of_the_namespace() -> None:
    """What made N sockets leaving at once cost N x rooms (bench/rooms.py): python-socketio's own manager
    tests every room for the leaving socket; ours looks up the socket's own rooms."""
    manager = Manager()
    manager.set_server(socketio.AsyncServer(client_manager=manager))
    sids = []
    for i in range(50):
        sid = await manager.connect(f"eio-{i}", NS)
        await manager.enter_room(sid, NS, f"user:{i}")
        await manager.enter_room(sid, NS, "patient:shared")
        sids.append(sid)
    manager.rooms[NS] = Unwalkable(manager.rooms[NS])
    assert set(manager.get_rooms(sids[0], NS)) == {sids[0], "user:0", "patient:shared"}
    for sid in sids[:-1]:
        await manager.disconnect(sid, NS)
    assert set(dict.keys(manager.rooms[NS])) == {None, sids[-1], "user:49", "patient:shared"}
    assert manager.rooms_of == {NS: {sids[-1]: {None, sids[-1], "user:49", "patient:shared"}}}
    await manager.disconnect(sids[-1], NS)
    assert manager.rooms == {} and manager.rooms_of == {}


async def test_the_redis_manager_stops_listening_when_its_server_stops(store: Any, redis_url: str, tmp_path: Path,
                                                                        aiohttp_server: Any) -> None:
    """python-socketio never ends its Redis listening task; a stopped server ends it and closes its connections."""
    server = await aiohttp_server(create_app(make_settings(store.url, tmp_path, redis_url=redis_url)))
    async with Api.of(server) as api:
        await (await api.socket(await api.register("patient"))).close()
        manager = api.app[SERVER].realtime.sio.manager
        assert isinstance(manager, RedisManager) and not manager.thread.done()
    await server.close()
    assert manager.thread.done()
    assert manager.pubsub.connection is None  # closed, given back
    listening = [t for t in asyncio.all_tasks() if "_thread" in getattr(t.get_coro(), "__qualname__", "")]
    assert listening == []
