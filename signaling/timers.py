"""Ring timeouts and reconnect grace periods: a timer in the process that started them, and a sweep in
every process that catches those a dead process left behind. Every tenth sweep also runs the
``every_stale`` checks (calls held by sockets, recordings made by processes that died)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from server.core.background import cancel_and_wait
from server.core.config import Settings
from server.core.documents import aware, utcnow
from server.core.errors import ApiError
from signaling.call_state import Action, CallState
from signaling.documents import CallSession
from signaling.store import CallStore, Refused

log = logging.getLogger(__name__)
SWEEP_BATCH = 100
STALE_EVERY = 10  # every this many sweeps, look for calls held by sockets of processes that died
DUE = {Action.TIMEOUT: ("ring_deadline", CallState.RINGING),
       Action.GRACE_EXPIRED: ("grace_deadline", CallState.RECONNECTING)}


class CallTimers:
    def __init__(self, settings: Settings, store: CallStore) -> None:
        self.settings = settings
        self.store = store
        self.timers: dict[str, asyncio.Task[None]] = {}
        self.every_stale: list[Callable[[], Awaitable[None]]] = []
        self._sweeper: asyncio.Task[None] | None = None
        store.on_ended.append(self._ended)

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep(), name="call-sweeper")

    async def stop(self) -> None:
        await cancel_and_wait(self._sweeper, *self.timers.values())
        self.timers.clear()

    def schedule(self, call: CallSession, kind: str, delay: float, action: Action) -> None:
        key = f"{call.id}:{kind}"
        self.cancel(call, kind)

        async def fire() -> None:
            await asyncio.sleep(delay)
            self.timers.pop(key, None)
            await self.expire(call.id, action)

        self.timers[key] = asyncio.create_task(fire(), name=f"call-{key}")

    def cancel(self, call: CallSession, kind: str) -> None:
        task = self.timers.pop(f"{call.id}:{kind}", None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _ended(self, call: CallSession) -> None:
        self.cancel(call, "ring")
        self.cancel(call, "grace")

    async def expire(self, call_id: Any, action: Action) -> None:
        """Ring timeout or end of a grace period, if still due: whichever process gets here first moves
        the call, the compare-and-swap refuses the others."""
        field, state = DUE[action]

        def change(d: CallSession, now: datetime) -> dict[str, Any]:
            due = getattr(d, field)
            if d.state != state or due is None or aware(due) > now:
                raise Refused
            return self.store.move(d, action, now, None)

        try:
            await self.store.update(call_id, change)
        except (Refused, ApiError):
            pass
        except Exception:
            log.exception("expiring call %s", call_id)

    async def _sweep(self) -> None:
        passes = 0
        while True:
            await asyncio.sleep(self.settings.call_sweep_s)
            passes += 1
            try:
                now = utcnow()
                coll = CallSession.get_pymongo_collection()
                for action, (field, state) in DUE.items():
                    cursor = coll.find({"state": str(state), field: {"$lte": now}}, {"_id": 1}).limit(SWEEP_BATCH)
                    for raw in await cursor.to_list():
                        await self.expire(raw["_id"], action)
                if passes % STALE_EVERY == 0:
                    for check in self.every_stale:
                        await check()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("call sweep failed: %s", exc)
