"""What the server asks its ``DevicePush`` (the push outbox) to send, recorded while it is forwarded: the real
object on ``app[SERVER]`` is wrapped in place, so every holder of it (notifications, calls) is recorded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from tests.helpers import Api, Sock, User, connect


class Recorder:
    """``pushed``: (user, device, notification kind) per device a notification was pushed to (device ``*``: all);
    ``rings``: (user, call id, devices); ``cancels``: (user, call id, reason)."""

    def __init__(self, push: Any) -> None:
        self.pushed: list[tuple[str, str, str]] = []
        self.rings: list[tuple[str, str, list[str] | None]] = []
        self.cancels: list[tuple[str, str, str]] = []
        self._changed = asyncio.Condition()
        for name in ("push_notes", "ring", "cancel_ring"):
            setattr(push, name, self._recording(getattr(self, f"_{name}"), getattr(push, name)))

    def _recording(self, record: Callable[..., None], real: Callable[..., Any]) -> Callable[..., Any]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            record(*args, **kwargs)
            async with self._changed:
                self._changed.notify_all()
            return await real(*args, **kwargs)

        return call

    def _push_notes(self, notes: list[Any], devices: dict[Any, list[str]] | None = None) -> None:
        for note in notes:
            for device in (devices or {}).get(note.user_id, ["*"]):
                self.pushed.append((str(note.user_id), device, note.kind))

    def _ring(self, user_id: Any, call: dict[str, Any], devices: list[str] | None = None) -> None:
        self.rings.append((str(user_id), call["id"], devices))

    def _cancel_ring(self, user_id: Any, call_id: str, reason: str) -> None:
        self.cancels.append((str(user_id), call_id, reason))

    def devices_pushed(self, user: User, kind: str | None = None) -> list[str]:
        return [device for uid, device, k in self.pushed if uid == user.id and kind in (None, k)]

    async def wait(self, done: Callable[[], bool], timeout: float = 10) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(done), timeout)


async def device(api: Api, user: User, device_id: str, register: bool = True, stay: bool = True) -> Sock:
    """A socket of app installation ``device_id``, its push registration made (``register``); closed unless
    ``stay`` (a phone whose app the OS has closed, still registered)."""
    sock = await connect(api.base_url, None, auth={"token": user.access_token, "device_id": device_id})
    if register:
        await sock.ok("push:register", {"provider": "fcm", "token": f"fcm-token:{device_id}"})
    if stay:
        api.sockets.append(sock)
    else:
        await sock.close()
    return sock
