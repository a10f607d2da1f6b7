"""python-socketio's client managers, with the rooms of each socket indexed.

python-socketio keeps its rooms one way only (namespace → room → sockets), so a socket's disconnect, and
``get_rooms``, test every room of the namespace for it: each socket here is in three or four rooms (its own,
its user's, its patients', its device's), so N sockets leaving at once (a network blip, a worker restarting,
the end of the morning rush) cost N x 4N room tests, all on the event loop. ``bench/rooms.py``: with
python-socketio's own manager a disconnect cost 136 µs of CPU among 1,000 sockets and 429 µs among 4,000
(4,000 leaving at once: 1.7 s in which the server does nothing else; 1,600 sockets leaving after the ``rush``
bench's 400-patient step stalled it 0.2 and 0.6 s); with the index 6.8 and 4.8 µs. The
managers here keep the other direction too (namespace → socket → rooms), updated in the two methods
through which python-socketio enters and leaves every room, and a disconnect leaves just the socket's rooms.
"""

from __future__ import annotations

from typing import Any

import socketio

from server.core.background import cancel_and_wait


class RoomIndex:
    """Mixed into a python-socketio manager (``socketio.base_manager.BaseManager``): which rooms each socket
    is in (``None``, the namespace's room of all its sockets, included, as python-socketio has it)."""

    rooms: dict[str, dict[Any, Any]]
    callbacks: dict[str, Any]
    pending_connect: dict[str, list[str]]
    pending_disconnect: dict[str, list[str]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rooms_of: dict[str, dict[str, set[Any]]] = {}  # namespace -> sid -> its rooms

    def basic_enter_room(self, sid: str, namespace: str, room: Any, eio_sid: str | None = None) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)  # type: ignore[misc]
        self.rooms_of.setdefault(namespace, {}).setdefault(sid, set()).add(room)

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)  # type: ignore[misc]
        of_namespace = self.rooms_of.get(namespace, {})
        joined = of_namespace.get(sid)
        if joined is not None:
            joined.discard(room)
            if not joined:
                del of_namespace[sid]
                if not of_namespace:
                    del self.rooms_of[namespace]

    def get_rooms(self, sid: str, namespace: str) -> list[Any]:
        return [room for room in self.rooms_of.get(namespace, {}).get(sid, ()) if room is not None]

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        """python-socketio's ``basic_disconnect`` (5.18), its rooms taken from the index."""
        if namespace not in self.rooms:
            return
        for room in list(self.rooms_of.get(namespace, {}).get(sid, ())):
            self.basic_leave_room(sid, namespace, room)
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            sids = pending.get(namespace)
            if sids is not None and sid in sids:
                sids.remove(sid)
                if not sids:
                    del pending[namespace]


class Manager(RoomIndex, socketio.AsyncManager):
    """One process: rooms in memory."""

    async def close(self) -> None:
        """Nothing runs in the background here."""


class RedisManager(RoomIndex, socketio.AsyncRedisManager):
    """Several processes: emits shared through Redis (``HEALTHMATE_REDIS_URL``)."""

    async def close(self) -> None:
        """Stop listening to Redis and close its connections: python-socketio starts the listening task and
        never ends it (its ``shutdown`` stops Engine.IO only), so it outlived the server on the event loop."""
        await cancel_and_wait(getattr(self, "thread", None))
        for conn in (self.pubsub, self.redis):
            if conn is not None:
                await conn.aclose()
