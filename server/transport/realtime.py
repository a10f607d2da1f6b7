"""Socket.IO wiring: authenticated connects, rooms, and validated, acknowledged events.

Rooms: ``user:<id>`` holds every connected device of a user; ``session:<sid>`` the sockets of
one login; ``patient:<id>`` the patient's own sockets and those of every linked caregiver and
clinician, kept in step with link changes through the control bus, in every process.
Every event handler answers through its ack with ``{"ok": true, "data": ...}`` or
``{"ok": false, "error": {code, message, details}}``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import socketio
from aiohttp import web
from multidict import CIMultiDict

from server.core.config import Settings
from server.core.errors import ApiError, as_api_error, error_body
from server.core.identity import Client, Principal
from server.infra import fastjson
from server.infra.metrics import CONNECTIONS, EVENTS
from server.infra.presence import Presence
from server.infra.ratelimit import TokenBuckets
from server.transport.events import EventRouter, unknown_event
from server.transport.rooms import Manager, RedisManager

log = logging.getLogger(__name__)
NAMESPACE = "/"
def user_room(user_id: Any) -> str:
    return f"user:{user_id}"


def patient_room(patient_id: Any) -> str:
    return f"patient:{patient_id}"


def device_room(device_id: Any) -> str:
    return f"device:{device_id}"


ConnectHook = Callable[[str, Principal], Awaitable[None]]
Authenticate = Callable[[Any], Awaitable[Principal]]  # the handshake's auth dict -> who connects
PatientsOf = Callable[[Principal], Awaitable[list[Any]]]  # the patients whose rooms a user joins
RESERVED_EVENTS = frozenset({"connect", "disconnect", "connect_error"})
CLIENT_DEVICE_ID = re.compile(r"^[A-Za-z0-9_:-]{1,64}$")


DeviceSink = Callable[[str, str, Any, Callable[..., Any] | None], Awaitable[None]]


class _Server(socketio.AsyncServer):
    """Also hands every event emitted to a device's room to the other device transports (the MQTT
    bridge), in the process that emits it: emit commands to ``device_room(id)`` to reach every device.
    A message that is not a Socket.IO packet closes the connection, as socket.io's own server does
    (python-socketio would log a traceback and drop it, leaving the sender waiting for an ack)."""

    device_sinks: list[DeviceSink]

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        try:
            await super()._handle_eio_message(eio_sid, data)
        except ValueError as exc:
            log.warning("closing %s: not a Socket.IO packet (%s)", eio_sid, str(exc)[:120])
            await self.eio.disconnect(eio_sid)

    async def _handle_event_internal(self, server: Any, sid: str, eio_sid: str, data: list[Any], namespace: str,
                                     id: int | None) -> None:
        """A client packet naming a reserved event (``connect``, ``disconnect``) would run the server's own
        connection handlers with the client's payload as their arguments: it is an unknown event."""
        if data and data[0] in RESERVED_EVENTS:
            if id is not None:
                await self._send_packet(eio_sid, self.packet_class(
                    socketio.packet.ACK, namespace=namespace, id=id, data=[unknown_event(data[0])]))
            return
        await super()._handle_event_internal(server, sid, eio_sid, data, namespace, id)

    async def emit(self, event: str, data: Any = None, to: Any = None, room: Any = None,  # type: ignore[override]
                   **kwargs: Any) -> None:
        await super().emit(event, data, to=to, room=room, **kwargs)
        target = to if to is not None else room
        if isinstance(target, str) and target.startswith("device:"):
            for sink in getattr(self, "device_sinks", ()):
                try:
                    await sink(target.removeprefix("device:"), event, data, kwargs.get("callback"))
                except Exception:
                    log.exception("device sink failed for %s", event)


@web.middleware
async def _no_websocket_deflate(request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
    """Decline permessage-deflate on the Socket.IO websocket (aiohttp accepts it whenever a client offers
    it, and Node's and browsers' clients do). Our messages are small JSON; deflating each one costs CPU
    on both ends (it halved the Node client's throughput in bench/events.py) for little saved, which is
    why socket.io's own server ships with it off."""
    if "Sec-WebSocket-Extensions" in request.headers and request.path.startswith("/socket.io/"):
        headers = CIMultiDict(request.headers)
        del headers["Sec-WebSocket-Extensions"]
        request = request.clone(headers=headers)
    return await handler(request)


class Realtime:
    """The Socket.IO adapter: connections, rooms, emits, and every event handed to ``router``."""

    def __init__(self, settings: Settings, router: EventRouter, presence: Presence, authenticate: Authenticate,
                 patients_of: PatientsOf) -> None:
        manager = RedisManager(settings.redis_url) if settings.redis_url else Manager()
        self.sio = _Server(
            async_mode="aiohttp", client_manager=manager, json=fastjson,
            cors_allowed_origins=settings.cors_origins or None,
            max_http_buffer_size=settings.max_message_bytes,
        )
        self.sio.device_sinks = []
        self.router = router
        self.presence = presence
        self._authenticate = authenticate
        self.patients_of = patients_of
        self.trust_forwarded = settings.trust_forwarded
        self.principals: dict[str, Principal] = {}
        self.clients: dict[str, Client] = {}
        self.device_ids: dict[str, str] = {}  # sid -> the client's stable device id (per-device delivery)
        self.connect_hooks: list[ConnectHook] = []
        self.disconnect_hooks: list[Callable[[str], Awaitable[None]]] = []
        self.addr_limit = TokenBuckets(settings.connect_rate_per_s, settings.connect_burst)
        self.sio.on("*", self._unknown_event)
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        router.on_register.append(self._route)
        for name in router.events:
            self._route(name)

    @property
    def process_id(self) -> str:
        return self.presence.process_id

    def attach(self, app: web.Application) -> None:
        app.middlewares.append(_no_websocket_deflate)
        self.sio.attach(app, socketio_path="socket.io")

    async def user_online(self, user_id: Any) -> bool:
        """Whether the user has a connected socket in this or any live process."""
        return bool(self._local(user_room(user_id))) or await self.presence.online_elsewhere(user_id)

    async def socket_alive(self, user_id: Any, sid: str) -> bool:
        return sid in self.principals or await self.presence.socket_alive(user_id, sid)

    async def live_devices(self, user_id: Any) -> set[str] | None:
        """The device ids of the user's connected sockets, here and in every live process (None: unknown)."""
        here = {self.device_ids[sid] for sid in self._local(user_room(user_id)) if sid in self.device_ids}
        elsewhere = await self.presence.devices_elsewhere(user_id)
        return None if elsewhere is None else here | elsewhere

    # --- connections -------------------------------------------------------------------------------

    def _client(self, environ: dict[str, Any]) -> Client:
        request = environ.get("aiohttp.request")
        remote = request.remote if request is not None else environ.get("REMOTE_ADDR")
        return Client.of(remote, environ.get("HTTP_X_FORWARDED_FOR"), environ.get("HTTP_USER_AGENT"),
                         self.trust_forwarded)

    async def _on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        client = self._client(environ)
        wait = self.addr_limit.take(client.addr or "?")
        if wait:
            err = ApiError("too_many_connections", "Too many connections from this address; retry later", 429,
                           {"retry_after_s": round(wait, 1)})
            raise socketio.exceptions.ConnectionRefusedError(err.message, err.body())
        try:
            principal = await self._authenticate(auth)
            device_id = self._device_id(sid, auth)
        except Exception as exc:
            err = as_api_error(exc, "connect")
            raise socketio.exceptions.ConnectionRefusedError(err.message, err.body()) from None
        self.principals[sid] = principal
        self.device_ids[sid] = device_id
        self.clients[sid] = client
        if principal.is_device:
            # A device hears only what is addressed to it, not its patient's personal events.
            await self.sio.enter_room(sid, device_room(principal.sid))
        else:
            await self.sio.enter_room(sid, user_room(principal.user_id))
            await self.sio.enter_room(sid, f"session:{principal.sid}")
            await self.presence.mark(principal.user_id, sid, True, device_id)
            for pid in await self.patients_of(principal):
                await self.sio.enter_room(sid, patient_room(pid))
        for hook in self.connect_hooks:
            await hook(sid, principal)
        CONNECTIONS.labels(principal.role).inc()

    @staticmethod
    def _device_id(sid: str, auth: Any) -> str:
        """The app installation a socket belongs to: ``auth.device_id`` if given (stable across
        reconnects), else one derived from the socket id."""
        raw = auth.get("device_id") if isinstance(auth, dict) else None
        if raw is None:
            return "sid-" + re.sub(r"[^A-Za-z0-9_-]", "_", sid)
        if not isinstance(raw, str) or not CLIENT_DEVICE_ID.match(raw):
            raise ApiError("invalid_device_id", "device_id must be 1-64 letters, digits, '_', '-' or ':'", 422)
        return raw

    async def _on_disconnect(self, sid: str, *_: Any) -> None:
        for hook in self.disconnect_hooks:
            try:
                await hook(sid)
            except Exception:
                log.exception("disconnect hook failed for %s", sid)
        principal = self.principals.pop(sid, None)
        self.clients.pop(sid, None)
        self.device_ids.pop(sid, None)
        self.router.forget(sid)
        if principal is not None:
            CONNECTIONS.labels(principal.role).dec()
        if principal is not None and not principal.is_device:
            await self.presence.mark(principal.user_id, sid, False)

    # --- events ------------------------------------------------------------------------------------

    def _route(self, name: str) -> None:
        async def dispatch(sid: str, *args: Any) -> dict[str, Any]:
            principal = self.principals.get(sid)
            if principal is None:
                EVENTS.labels(name, "unauthorized").inc()
                return {"ok": False, **error_body("unauthorized", "Not authenticated")}
            return await self.router.handle(name, principal, sid, self.clients.get(sid, Client()),
                                            args[0] if args else None)

        self.sio.on(name, dispatch)

    async def _unknown_event(self, event: str, sid: str, *args: Any) -> dict[str, Any]:
        return unknown_event(event)

    # --- emitting ----------------------------------------------------------------------------------

    async def to_patient(self, patient_id: Any, event: str, data: Any) -> None:
        await self.sio.emit(event, data, room=patient_room(patient_id))

    async def to_user(self, user_id: Any, event: str, data: Any) -> None:
        await self.sio.emit(event, data, room=user_room(user_id))

    async def to_room(self, room: str, event: str, data: Any, skip_sid: str | None = None) -> None:
        """To a room or one socket (a socket id is a room too), in whichever process holds it. A socket of
        this process is reached directly: nothing goes through Redis for the other processes to discard."""
        await self.sio.emit(event, data, room=room, skip_sid=skip_sid, ignore_queue=room in self.principals)

    def backlog(self, sid: str) -> int | None:
        """Packets waiting on the connection of this process's socket ``sid``; None if it is not here."""
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, NAMESPACE)
        sock = self.sio.eio.sockets.get(eio_sid) if eio_sid else None
        return None if sock is None else sock.queue.qsize()

    async def to_socket(self, sid: str, event: str, data: Any, callback: Callable[..., Any] | None = None) -> None:
        """To a socket of this process, directly (nothing through Redis); ``callback`` runs on the client's ack."""
        await self.sio.emit(event, data, to=sid, ignore_queue=True, callback=callback)

    # --- control messages, applied to this process's sockets ----------------------------------------

    def local_sids(self, room: str) -> list[str]:
        """This process's sockets in ``room``."""
        return self._local(room)

    def user_sids(self, user_id: Any) -> list[str]:
        """This process's sockets of one user."""
        return self._local(user_room(user_id))

    def device_id(self, sid: str) -> str | None:
        """The app installation a socket of this process belongs to."""
        return self.device_ids.get(sid)

    def _local(self, room: str) -> list[str]:
        return [sid for sid, _ in self.sio.manager.get_participants(NAMESPACE, room)]

    async def apply_sessions_revoked(self, msg: dict[str, Any]) -> None:
        for session in msg["sids"]:
            for sid in self._local(f"session:{session}"):
                await self.sio.disconnect(sid)

    async def apply_device_revoked(self, msg: dict[str, Any]) -> None:
        for sid in self._local(device_room(msg["device_id"])):
            await self.sio.disconnect(sid)

    async def apply_link_changed(self, msg: dict[str, Any]) -> None:
        room = patient_room(msg["patient_id"])
        for sid in self._local(user_room(msg["member_id"])):
            if msg["active"]:
                await self.sio.enter_room(sid, room)
            else:
                await self.sio.leave_room(sid, room)

