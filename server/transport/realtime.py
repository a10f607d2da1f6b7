"""Socket.IO wiring: authenticated connects, rooms, and validated, acknowledged events.

Rooms: ``user:<id>`` holds every connected device of a user; ``session:<sid>`` the sockets of
one login; ``patient:<id>`` the patient's own sockets and those of every linked caregiver and
clinician, kept in step with link changes through the control bus, in every process.
Every event handler answers through its ack with ``{"ok": true, "data": ...}`` or
``{"ok": false, "error": {code, message, details}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import socketio
from aiohttp import web
from beanie import PydanticObjectId
from multidict import CIMultiDict
from pydantic import BaseModel, ValidationError
from pymongo.errors import ConnectionFailure
from redis.asyncio import Redis

from devices.registry import authenticate_device
from server.care.auth import AuthService
from server.care.documents import Link
from server.core.config import Settings
from server.core.errors import ApiError, error_body, store_unavailable, validation_error
from server.core.identity import Client, Principal
from server.infra import fastjson
from server.infra.pubsub import ControlBus
from server.infra.ratelimit import TokenBuckets

log = logging.getLogger(__name__)
NAMESPACE = "/"
# Who is online across processes: a hash per user (socket id -> process id), trusted only while
# that process's heartbeat key lives, so a killed process's sockets stop counting within PROCESS_TTL_S.
ONLINE_KEY = "healthmate:online:"
PROCESS_KEY = "healthmate:process:"
PROCESS_TTL_S = 15


def user_room(user_id: Any) -> str:
    return f"user:{user_id}"


def patient_room(patient_id: Any) -> str:
    return f"patient:{patient_id}"


def device_room(device_id: Any) -> str:
    return f"device:{device_id}"


@dataclass(frozen=True)
class EventContext:
    principal: Principal
    sid: str
    client: Client
    realtime: Realtime


Handler = Callable[[EventContext, Any], Awaitable[Any]]
ConnectHook = Callable[[str, Principal], Awaitable[None]]
USER_ROLES = frozenset({"patient", "caregiver", "clinician"})
DEVICE_ROLES = frozenset({"device"})
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
    def __init__(self, settings: Settings, auth: AuthService, bus: ControlBus, redis: Redis | None = None) -> None:
        manager = socketio.AsyncRedisManager(settings.redis_url) if settings.redis_url else None
        self.sio = _Server(
            async_mode="aiohttp", client_manager=manager, json=fastjson,
            cors_allowed_origins=settings.cors_origins or None,
            max_http_buffer_size=settings.max_message_bytes,
        )
        self.sio.device_sinks = []
        self.auth = auth
        self.redis = redis
        self.process_id = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._heartbeat: asyncio.Task[None] | None = None
        self.trust_forwarded = settings.trust_forwarded
        self.principals: dict[str, Principal] = {}
        self.clients: dict[str, Client] = {}
        self.device_ids: dict[str, str] = {}  # sid -> the client's stable device id (per-device delivery)
        self.events: dict[str, tuple[Handler, type[BaseModel] | None]] = {}
        self.roles: dict[str, frozenset[str]] = {}
        self.connect_hooks: list[ConnectHook] = []
        self.disconnect_hooks: list[Callable[[str], Awaitable[None]]] = []
        self.conn_limit = TokenBuckets(settings.event_rate_per_s, settings.event_burst)
        self.user_limit = TokenBuckets(settings.user_event_rate_per_s, settings.user_event_burst)
        self.addr_limit = TokenBuckets(settings.connect_rate_per_s, settings.connect_burst)
        self.sio.on("*", self._unknown_event)
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        bus.on("sessions_revoked", self._apply_sessions_revoked)
        bus.on("link_changed", self._apply_link_changed)
        bus.on("device_revoked", self._apply_device_revoked)

    def attach(self, app: web.Application) -> None:
        app.middlewares.append(_no_websocket_deflate)
        self.sio.attach(app, socketio_path="socket.io")

    async def start(self) -> None:
        if self.redis is not None:
            self._heartbeat = asyncio.create_task(self._beat(), name="process-heartbeat")

    async def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            with contextlib.suppress(Exception):
                await self.redis.delete(PROCESS_KEY + self.process_id)  # type: ignore[union-attr]

    async def _beat(self) -> None:
        while True:
            try:
                await self.redis.set(PROCESS_KEY + self.process_id, 1, ex=PROCESS_TTL_S)  # type: ignore[union-attr]
            except Exception as exc:
                log.warning("process heartbeat failed: %s", exc)
            await asyncio.sleep(PROCESS_TTL_S / 3)

    async def user_online(self, user_id: Any) -> bool:
        """Whether the user has a connected socket in this or any live process."""
        if self._local(user_room(user_id)):
            return True
        if self.redis is None:
            return False
        try:
            owners = set((await self.redis.hgetall(ONLINE_KEY + str(user_id))).values())
            return any([await self.redis.exists(PROCESS_KEY + p.decode()) for p in owners])
        except Exception as exc:  # Redis down: say online, so nothing is pushed twice for nothing
            log.warning("online check failed: %s", exc)
            return True

    async def _mark_online(self, user_id: Any, sid: str, online: bool) -> None:
        if self.redis is None:
            return
        try:
            if online:
                await self.redis.hset(ONLINE_KEY + str(user_id), sid, self.process_id)
            else:
                await self.redis.hdel(ONLINE_KEY + str(user_id), sid)
        except Exception as exc:
            log.warning("online marker for %s not updated: %s", user_id, exc)

    # --- connections -------------------------------------------------------------------------------

    def _client(self, environ: dict[str, Any]) -> Client:
        request = environ.get("aiohttp.request")
        addr = request.remote if request is not None else environ.get("REMOTE_ADDR")
        if self.trust_forwarded and environ.get("HTTP_X_FORWARDED_FOR"):
            addr = environ["HTTP_X_FORWARDED_FOR"].split(",")[0].strip()
        return Client(addr=addr, user_agent=environ.get("HTTP_USER_AGENT"))

    async def _authenticate(self, auth: Any) -> Principal:
        auth = auth if isinstance(auth, dict) else {}
        device_token, token = auth.get("device_token"), auth.get("token")
        if isinstance(device_token, str) and device_token:
            principal, _ = await authenticate_device(device_token)
            return principal
        if not isinstance(token, str) or not token:
            raise ApiError("token_missing", "Connect with auth={'token': <access token>} "
                           "(or {'device_token': <device credential>})", 401)
        return await self.auth.authenticate(token)

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
        except ApiError as err:
            raise socketio.exceptions.ConnectionRefusedError(err.message, err.body()) from None
        except ConnectionFailure:
            err = store_unavailable()
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
            await self._mark_online(principal.user_id, sid, True)
            for pid in await self.patients_of(principal):
                await self.sio.enter_room(sid, patient_room(pid))
        for hook in self.connect_hooks:
            await hook(sid, principal)

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
        self.conn_limit.forget(sid)
        if principal is not None and not principal.is_device:
            await self._mark_online(principal.user_id, sid, False)

    @staticmethod
    async def patients_of(principal: Principal) -> list[PydanticObjectId]:
        """The patients whose live events this principal receives."""
        if principal.role == "patient":
            return [principal.user_id]
        links = Link.find(Link.member_id == principal.user_id, Link.revoked_at == None)  # noqa: E711
        return [link.patient_id async for link in links]

    # --- events ------------------------------------------------------------------------------------

    def event(self, name: str, model: type[BaseModel] | None = None,
              roles: frozenset[str] = USER_ROLES) -> Callable[[Handler], Handler]:
        """Register ``handler(ctx, payload)`` for event ``name``; ``payload`` is validated by ``model``.
        Only principals with one of ``roles`` may send it (users by default, not devices)."""

        def register(handler: Handler) -> Handler:
            if name in self.events:
                raise ValueError(f"event {name} registered twice")
            self.events[name] = (handler, model)
            self.roles[name] = roles

            async def dispatch(sid: str, *args: Any) -> dict[str, Any]:
                principal = self.principals.get(sid)
                if principal is None:
                    return {"ok": False, **error_body("unauthorized", "Not authenticated")}
                wait = self.conn_limit.take(sid)
                if wait:
                    return _rate_limited(wait)
                return await self.handle(name, principal, sid, self.clients.get(sid, Client()),
                                         args[0] if args else None)

            self.sio.on(name, dispatch)
            return handler

        return register

    async def _unknown_event(self, event: str, sid: str, *args: Any) -> dict[str, Any]:
        return _unknown(event)

    async def handle(self, name: str, principal: Principal, sid: str, client: Client, data: Any) -> dict[str, Any]:
        """Run event ``name`` for ``principal`` and return its ack. Every transport comes through here
        (Socket.IO, and the MQTT bridge for devices), so an event behaves the same on each."""
        if name not in self.events:
            return _unknown(name)
        handler, model = self.events[name]
        roles = self.roles[name]
        wait = self.user_limit.take(principal.sid if principal.is_device else str(principal.user_id))
        if wait:
            return _rate_limited(wait)
        if principal.role not in roles:
            return {"ok": False, **error_body("forbidden", f"{name} is not for a {principal.role}")}
        try:
            if model is not None:
                payload = model.model_validate({} if data is None else data)
            elif data not in (None, {}):
                raise ApiError("invalid_payload", f"{name} takes no payload", 422)
            else:
                payload = None
            ctx = EventContext(principal, sid, client, self)
            return {"ok": True, "data": await handler(ctx, payload)}
        except ValidationError as exc:
            return {"ok": False, **validation_error(exc).body()}
        except ApiError as err:
            return {"ok": False, **err.body()}
        except ConnectionFailure as exc:
            log.warning("store unavailable for %s: %s", name, exc)
            return {"ok": False, **store_unavailable().body()}
        except Exception:
            log.exception("event %s failed", name)
            return {"ok": False, **error_body("internal", "Something went wrong on our side")}

    # --- emitting ----------------------------------------------------------------------------------

    async def to_patient(self, patient_id: Any, event: str, data: Any) -> None:
        await self.sio.emit(event, data, room=patient_room(patient_id))

    async def to_user(self, user_id: Any, event: str, data: Any) -> None:
        await self.sio.emit(event, data, room=user_room(user_id))

    async def to_room(self, room: str, event: str, data: Any, skip_sid: str | None = None) -> None:
        """To a room or one socket (a socket id is a room too), in whichever process holds it. A socket of
        this process is reached directly: nothing goes through Redis for the other processes to discard."""
        await self.sio.emit(event, data, room=room, skip_sid=skip_sid, ignore_queue=room in self.principals)

    # --- control messages, applied to this process's sockets ----------------------------------------

    def local_sids(self, room: str) -> list[str]:
        """This process's sockets in ``room``."""
        return self._local(room)

    def _local(self, room: str) -> list[str]:
        return [sid for sid, _ in self.sio.manager.get_participants(NAMESPACE, room)]

    async def _apply_sessions_revoked(self, msg: dict[str, Any]) -> None:
        for session in msg["sids"]:
            for sid in self._local(f"session:{session}"):
                await self.sio.disconnect(sid)

    async def _apply_device_revoked(self, msg: dict[str, Any]) -> None:
        for sid in self._local(device_room(msg["device_id"])):
            await self.sio.disconnect(sid)

    async def _apply_link_changed(self, msg: dict[str, Any]) -> None:
        room = patient_room(msg["patient_id"])
        for sid in self._local(user_room(msg["member_id"])):
            if msg["active"]:
                await self.sio.enter_room(sid, room)
            else:
                await self.sio.leave_room(sid, room)


def _unknown(event: Any) -> dict[str, Any]:
    return {"ok": False, **error_body("unknown_event", "No such event", {"event": str(event)[:64]})}


def _rate_limited(wait: float) -> dict[str, Any]:
    return {"ok": False, **error_body("rate_limited", "Too many events; slow down", {"retry_after_s": round(wait, 2)})}
