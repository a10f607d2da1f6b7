"""Recording a call, only with both participants' consent: the server takes the call's media (the
relay) and the process serving it records it; a withdrawal stops the recording, the call goes on.
The finished file is moved into the store (GridFS bucket ``recordings``, the file's id being the
call's), so any replica serves it and it is backed up with the database. A recording whose process
died is marked lost; ended calls and their recordings go after the retention period."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from beanie import PydanticObjectId
from gridfs import NoFile
from gridfs.asynchronous.grid_file import AsyncGridOut
from pymongo.errors import PyMongoError

from server.care import audit
from server.care.access import may_access
from server.core.background import cancel_and_wait
from server.core.config import Settings
from server.core.documents import EPOCH, utcnow
from server.core.errors import ApiError, not_found
from server.core.identity import Principal, as_object_id
from server.infra.presence import Presence
from server.infra.pubsub import ControlBus
from server.infra.store import GridBucket
from server.transport.events import EventContext
from signaling.call_state import Action
from signaling.documents import CallSession, call_json
from signaling.models import ConsentIn
from signaling.relayed import RelayedCalls
from signaling.store import CallStore
from signaling.timers import SWEEP_BATCH, CallTimers

log = logging.getLogger(__name__)
RECORDINGS = "recordings"  # GridFS bucket of finished recordings
UPLOAD_ATTEMPTS = 8
RETENTION_EVERY_S = 3600


class CallRecordings:
    def __init__(self, settings: Settings, store: CallStore, timers: CallTimers, relayed: RelayedCalls,
                 bus: ControlBus, presence: Presence) -> None:
        self.settings = settings
        self.store = store
        self.relayed = relayed
        self.host = relayed.host
        self.bus = bus
        self.presence = presence
        self._retainer: asyncio.Task[None] | None = None
        bus.on("call_record", self._start_recording)
        bus.on("call_record_stop", self._stop_recording)
        self.host.on_recorded.append(self._store)
        timers.every_stale.append(self.mark_lost)

    async def start(self) -> None:
        self._retainer = asyncio.create_task(self._retention(), name="call-retention")

    async def stop(self) -> None:
        await cancel_and_wait(self._retainer)

    def path(self, call_id: str) -> Path:
        """Where the recording is written while the call goes on (the process serving its media)."""
        return self.settings.data_dir / "recordings" / f"{call_id}.mka"

    @staticmethod
    def bucket() -> GridBucket:
        """Finished recordings: GridFS bucket ``recordings``, the file's id being the call's."""
        return GridBucket(CallSession.get_pymongo_collection().database, RECORDINGS)

    async def consent(self, ctx: EventContext, body: ConsentIn) -> dict[str, Any]:
        """A participant gives (or withdraws) consent to recording. With both consents the server takes
        the call's media (``call:relay`` to both) and records it; a withdrawal stops the recording."""
        doc = await self.store.participant(body.call_id, ctx.principal)
        me = ctx.principal.id

        def change(d: CallSession, now: datetime) -> dict[str, Any]:
            consent = {**d.consent, me: body.record}
            both = consent.get(str(d.caller_id)) is True and consent.get(str(d.callee_id)) is True
            fields: dict[str, Any] = {"consent": consent}
            if both and d.recording is None:
                fields.update(media_host=d.media_host or self.host.process_id,
                              recording={"file": f"{d.id}.mka", "started_at": now, "stopped_at": None, "bytes": None})
            return self.store.move(d, Action.CONSENT, now, me, **fields)

        await audit.record("call.consent", principal=ctx.principal, patient_id=doc.patient_id, client=ctx.client,
                           call_id=str(doc.id), record=body.record)
        old, call = await self.store.update(doc.id, change)
        call_id = str(call.id)
        if call.recording is not None and old.recording is None:
            # The process serving the media records it (this one, or the one a joiner's media went to).
            await self.bus.publish("call_record", call_id=call_id, host=call.media_host, media=call.media)
            if old.media_host is None:  # the two were talking directly: bring them to the server
                await self.relayed.to_relay(call, {"reason": "recording"})
        elif not body.record and call.recording is not None and call.recording.get("stopped_at") is None:
            await self.bus.publish("call_record_stop", call_id=call_id, host=call.media_host)
        return call_json(call, me)

    async def _start_recording(self, msg: dict[str, Any]) -> None:
        if msg["host"] == self.host.process_id:
            tracks = 2 if msg["media"] == "audio" else 4  # each participant's audio (and video)
            self.host.record(msg["call_id"], self.path(msg["call_id"]), tracks)

    async def _stop_recording(self, msg: dict[str, Any]) -> None:
        if msg["host"] == self.host.process_id:  # stored in the background: may be long
            self.host.stop_recording(msg["call_id"])

    async def _store(self, call_id: str, size: int) -> None:
        """Move the finished file into the store, then mark the recording stopped. While the store is
        unreachable the upload is retried; the local file is removed only once it is stored."""
        oid, path = PydanticObjectId(call_id), self.path(call_id)
        for attempt in range(UPLOAD_ATTEMPTS):
            try:
                with contextlib.suppress(NoFile):  # a half-written copy from an earlier attempt
                    await self.bucket().delete(oid)
                with path.open("rb") as f:
                    await (await self.bucket().ready()).upload_from_stream_with_id(
                        oid, path.name, f, metadata={"call_id": oid})
                break
            except PyMongoError as exc:
                log.warning("storing the recording of call %s (attempt %d): %s", call_id, attempt + 1, exc)
                await asyncio.sleep(min(2 ** attempt, 30))
        else:
            log.error("the recording of call %s could not be stored; it is kept at %s", call_id, path)
            return
        await CallSession.get_pymongo_collection().update_one(  # also over a "lost" a stalled heartbeat caused
            {"_id": oid, "recording.bytes": None},
            {"$set": {"recording.stopped_at": utcnow(), "recording.bytes": size, "recording.lost": False},
             "$inc": {"rev": 1}})
        path.unlink(missing_ok=True)

    async def mark_lost(self) -> None:
        """A recording whose process died before finishing it will never finish: say so (``lost``) rather
        than leave it "in progress" for ever. What that process had written stays on its disk."""
        # Started (a time, not null): the range keeps it on recording_unfinished.
        unfinished = CallSession.find({"recording.stopped_at": None, "recording.started_at": {"$gte": EPOCH}})
        async for call in unfinished.limit(SWEEP_BATCH):
            if call.media_host is not None and not await self.presence.alive(call.media_host):
                log.warning("the recording of call %s was lost with its process %s", call.id, call.media_host)
                await CallSession.get_pymongo_collection().update_one(
                    {"_id": call.id, "recording.stopped_at": None},
                    {"$set": {"recording.stopped_at": utcnow(), "recording.lost": True}, "$inc": {"rev": 1}})

    async def download(self, principal: Principal, call_id: str) -> tuple[CallSession, AsyncGridOut]:
        """A finished recording, to the people who were in the call and may still see the patient's data (a
        member whose link was revoked since gets the same 404 as anyone else)."""
        call = await CallSession.get(as_object_id(call_id, "call_id"))
        if (call is None or principal.user_id not in call.participants or call.recording is None
                or not await may_access(principal, call.patient_id)):
            raise not_found("recording")
        if call.recording.get("stopped_at") is None:
            raise ApiError("recording_in_progress", "The recording is still going on", 409)
        if call.recording.get("lost"):
            raise ApiError("recording_lost", "The recording was lost: the server process making it stopped first",
                           410)
        try:
            grid_out = await self.bucket().open_download_stream(call.id)
        except NoFile:
            raise not_found("recording") from None
        await audit.record("call.recording_download", principal=principal, patient_id=call.patient_id,
                           call_id=str(call.id))
        return call, grid_out

    async def apply_retention(self, before: datetime) -> int:
        """Delete ended calls (and their recordings) that ended before ``before``."""
        removed = 0
        async for call in CallSession.find({"state": "ended", "ended_at": {"$lt": before}}):
            if call.recording is not None:
                with contextlib.suppress(NoFile):
                    await self.bucket().delete(call.id)
                self.path(str(call.id)).unlink(missing_ok=True)
            await call.delete()
            removed += 1
        return removed

    async def _retention(self) -> None:
        while True:
            try:
                removed = await self.apply_retention(utcnow() - timedelta(days=self.settings.call_retention_days))
                if removed:
                    log.info("retention: removed %d calls", removed)
            except Exception as exc:
                log.warning("call retention pass failed: %s", exc)
            await asyncio.sleep(RETENTION_EVERY_S)
