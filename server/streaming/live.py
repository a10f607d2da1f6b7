"""Live view: caregivers and clinicians watching a patient's streams.

Frames are decimated to each watcher's display rate and queued per watcher in a bounded deque
that drops the oldest and counts what it dropped, so a slow watcher slows nobody else and
cannot grow memory: a watcher's sender only hands a packet to its websocket when the socket's
own outgoing queue is short. With Redis, the process that receives a device's frames
publishes them once on ``hm:live:<patient>``; every other process with watchers of that
patient subscribes and fans them out to its own sockets.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from beanie import PydanticObjectId

from server.care.access import may_access, require_patient
from server.core.errors import forbidden
from server.core.ports import SocketSender
from server.infra.pubsub import PubSub
from server.streaming.documents import SubscribeIn
from server.transport.events import EventContext

log = logging.getLogger(__name__)
QUEUE_FRAMES = 64  # per watcher: a few seconds of frames at most
QUEUE_EVENTS = 64  # per watcher: analyses, gaps, stream changes (about one a second per stream)
SOCKET_BACKLOG = 16  # packets already waiting on a watcher's websocket before we hold back


def decimation_factor(rate: float, display_rate: float) -> int:
    return max(1, round(rate / display_rate))


def decimate(samples: np.ndarray, factor: int, carry: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Block means of ``factor`` samples (a boxcar anti-alias filter), carrying the remainder
    to the next frame so the output is continuous across frames."""
    if factor == 1:
        return samples.astype(np.float32, copy=False), None  # watchers always get float32
    if carry is not None and carry.size:
        samples = np.concatenate([carry, samples])
    usable = samples.size - samples.size % factor
    out = samples[:usable].reshape(-1, factor).mean(axis=1, dtype=np.float32)
    return out.astype(np.float32, copy=False), samples[usable:].copy()


@dataclass(eq=False)
class Watcher:
    sid: str
    user_id: str
    patient_id: str
    display_rate: float
    # Frames and other events queue apart, so a backlog of frames never pushes out an analysis or a gap.
    frames: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=QUEUE_FRAMES))
    events: deque[tuple[str, dict[str, Any]]] = field(default_factory=lambda: deque(maxlen=QUEUE_EVENTS))
    dropped: int = 0  # frames dropped since the last frame sent (reported in it)
    dropped_total: int = 0
    dropped_events: int = 0
    carry: dict[str, np.ndarray | None] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def put(self, event: str, payload: dict[str, Any]) -> None:
        queue: deque[Any] = self.frames if event == "live:frame" else self.events
        if len(queue) == queue.maxlen:  # the oldest goes
            if queue is self.frames:
                self.dropped += 1
                self.dropped_total += 1
            else:
                self.dropped_events += 1
        queue.append(payload if queue is self.frames else (event, payload))
        self.wake.set()

    def take(self) -> tuple[str, dict[str, Any]] | None:
        if self.events:
            return self.events.popleft()
        if self.frames:
            payload = {**self.frames.popleft(), "dropped": self.dropped}
            self.dropped = 0
            return "live:frame", payload
        return None


class LiveHub:
    def __init__(self, sockets: SocketSender, pubsub: PubSub) -> None:
        self.sockets = sockets
        self.pubsub = pubsub
        self.origin = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.watchers: dict[str, set[Watcher]] = {}  # patient id -> local watchers
        self.by_sid: dict[str, dict[str, Watcher]] = {}  # sid -> patient id -> watcher

    # --- subscriptions ------------------------------------------------------------------------------

    async def subscribe(self, ctx: EventContext, body: SubscribeIn) -> Watcher:
        pid = str(await require_patient(ctx.principal, body.patient_id, "live.subscribe", ctx.client,
                                        display_rate=body.display_rate))
        await self.unsubscribe(ctx.sid, pid)
        watcher = Watcher(ctx.sid, ctx.principal.id, pid, body.display_rate)
        watcher.task = asyncio.create_task(self._sender(watcher), name=f"watcher-{ctx.sid}")
        first_here = pid not in self.watchers
        self.watchers.setdefault(pid, set()).add(watcher)
        self.by_sid.setdefault(ctx.sid, {})[pid] = watcher
        if first_here and self.pubsub.shared:
            await self.pubsub.subscribe(f"hm:live:{pid}", self._on_published)
        # A link revoked while we were checking found no watcher to end: check again, now that it is there.
        if not await may_access(ctx.principal, PydanticObjectId(pid)):
            await self.unsubscribe(ctx.sid, pid)
            raise forbidden()
        return watcher

    async def unsubscribe(self, sid: str, patient_id: str) -> bool:
        watcher = self.by_sid.get(sid, {}).pop(patient_id, None)
        if watcher is None:
            return False
        if watcher.task:
            watcher.task.cancel()
        group = self.watchers.get(patient_id)
        if group is not None:
            group.discard(watcher)
            if not group:
                del self.watchers[patient_id]
                if self.pubsub.shared:
                    await self.pubsub.unsubscribe(f"hm:live:{patient_id}")
        return True

    async def on_disconnect(self, sid: str) -> None:
        for pid in list(self.by_sid.get(sid, {})):
            await self.unsubscribe(sid, pid)
        self.by_sid.pop(sid, None)

    async def revoke_member(self, msg: dict[str, Any]) -> None:
        """A link ended: this process's sockets of that member stop watching that patient."""
        if msg.get("active"):
            return
        for watcher in list(self.watchers.get(msg["patient_id"], ())):
            if watcher.user_id == msg["member_id"]:
                await self.unsubscribe(watcher.sid, watcher.patient_id)
                await self.sockets.to_socket(watcher.sid, "live:ended",
                                             {"patient_id": watcher.patient_id, "reason": "link_revoked"})

    # --- delivery -----------------------------------------------------------------------------------

    async def _sender(self, w: Watcher) -> None:
        while True:
            await w.wake.wait()
            w.wake.clear()
            while w.frames or w.events:
                backlog = self.sockets.backlog(w.sid)
                if backlog is None:
                    return
                if backlog > SOCKET_BACKLOG:
                    await asyncio.sleep(0.02)  # the client is not keeping up: let our bounded queue absorb it
                    continue
                item = w.take()
                if item is None:
                    continue
                try:
                    await self.sockets.to_socket(w.sid, item[0], item[1])
                except Exception as exc:  # the socket went away under us: its disconnect ends this watcher
                    log.debug("watcher %s: %s", w.sid, exc)
                    return

    def _deliver_local(self, patient_id: str, event: str, payload: dict[str, Any],
                       samples: np.ndarray | None = None, rate: float | None = None) -> None:
        for w in self.watchers.get(patient_id, ()):
            if samples is None:
                w.put(event, payload)
                continue
            assert rate is not None
            factor = decimation_factor(rate, w.display_rate)
            out, w.carry[payload["stream_id"]] = decimate(samples, factor, w.carry.get(payload["stream_id"]))
            w.put(event, {**payload, "rate": rate / factor, "samples": out.tobytes()})

    async def publish_frame(self, patient_id: str, meta: dict[str, Any], samples: np.ndarray, rate: float) -> None:
        """A validated frame: to local watchers now, and to other processes' watchers through Redis."""
        self._deliver_local(patient_id, "live:frame", meta, samples, rate)
        if self.pubsub.shared:
            header = json.dumps({"o": self.origin, "e": "live:frame", "m": meta, "r": rate}).encode()
            await self.pubsub.publish(f"hm:live:{patient_id}", header + b"\n" + samples.astype("<f4").tobytes())

    async def publish(self, patient_id: str, event: str, payload: dict[str, Any]) -> None:
        """A non-frame live message (an analysis, a gap, a stream opening or closing)."""
        self._deliver_local(patient_id, event, payload)
        if self.pubsub.shared:
            header = json.dumps({"o": self.origin, "e": event, "m": payload}).encode()
            await self.pubsub.publish(f"hm:live:{patient_id}", header + b"\n")

    # --- cross-process ------------------------------------------------------------------------------

    async def _on_published(self, channel: str, message: bytes) -> None:
        header, _, body = message.partition(b"\n")
        msg = json.loads(header)
        if msg["o"] == self.origin:
            return
        patient_id = channel.rsplit(":", 1)[1]
        if msg["e"] == "live:frame":
            self._deliver_local(patient_id, "live:frame", msg["m"], np.frombuffer(body, dtype="<f4"), msg["r"])
        else:
            self._deliver_local(patient_id, msg["e"], msg["m"])

    async def start(self) -> None:
        """Nothing to start: watchers come with subscriptions, their channels with the first of a patient."""

    async def stop(self) -> None:
        for sid in list(self.by_sid):
            await self.on_disconnect(sid)

