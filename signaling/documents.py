"""The stored side of calls: one ``CallSession`` per call (its state, sockets, deadlines, consents,
recording and every transition), one ``CallLine`` per user in a live call, and the JSON a call is
shown as."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from beanie import Document, PydanticObjectId
from pydantic import Field
from pymongo import ASCENDING, DESCENDING, IndexModel

from server.core.documents import VersionedDocument, iso, utcnow
from signaling.call_state import CallState

Media = Literal["audio", "video"]


class CallSession(VersionedDocument):
    caller_id: PydanticObjectId
    callee_id: PydanticObjectId
    caller_name: str
    callee_name: str
    participants: list[PydanticObjectId]
    patient_id: PydanticObjectId  # the patient of the two (calls are between a patient and their care team)
    media: Media
    state: CallState = CallState.RINGING
    rev: int = 0  # bumped by every write; writes are conditional on it
    caller_sid: str | None = None  # the sockets in the call
    callee_sid: str | None = None
    dropped: dict[str, datetime] = Field(default_factory=dict)  # user id -> end of their grace period
    grace_deadline: datetime | None = None
    ring_deadline: datetime | None = None
    offer_from: str | None = None  # user id whose SDP offer awaits an answer
    joined: dict[str, str] = Field(default_factory=dict)  # joiner's user id -> socket id (relayed calls)
    media_host: str | None = None  # the process terminating the media of a relayed call
    consent: dict[str, bool] = Field(default_factory=dict)  # participant's user id -> consents to recording
    recording: dict[str, Any] | None = None  # {file, started_at, stopped_at, bytes} once both consented
    transitions: list[dict[str, Any]] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=utcnow)
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    end_reason: str | None = None
    duration_s: float | None = None

    class Settings:
        name = "calls"
        indexes = [
            IndexModel([("participants", ASCENDING), ("_id", DESCENDING)], name="participant_recent"),
            IndexModel([("state", ASCENDING), ("ring_deadline", ASCENDING)], name="ringing_due"),
            IndexModel([("state", ASCENDING), ("grace_deadline", ASCENDING)], name="grace_due"),
            IndexModel([("state", ASCENDING), ("ended_at", ASCENDING)], name="ended"),  # retention
            IndexModel([("recording.stopped_at", ASCENDING), ("recording.started_at", ASCENDING)],
                       name="recording_unfinished"),
        ]

    def side_of(self, user_id: str) -> Literal["caller", "callee"] | None:
        return "caller" if user_id == str(self.caller_id) else "callee" if user_id == str(self.callee_id) else None

    def peer_sid(self, side: str) -> str | None:
        return self.callee_sid if side == "caller" else self.caller_sid


class CallLine(VersionedDocument):
    """A user's one live call; the unique id makes claiming it atomic."""

    id: str  # type: ignore[assignment]
    call_id: PydanticObjectId

    class Settings:
        name = "call_lines"
        indexes = [IndexModel([("call_id", ASCENDING)], name="call")]


DOCUMENTS: list[type[Document]] = [CallSession, CallLine]


def call_json(c: CallSession, viewer: str | None = None) -> dict[str, Any]:
    body = {
        "id": str(c.id), "patient_id": str(c.patient_id), "media": c.media, "state": str(c.state),
        "caller": {"id": str(c.caller_id), "name": c.caller_name},
        "callee": {"id": str(c.callee_id), "name": c.callee_name},
        "outcome": c.end_reason if c.state == CallState.ENDED else str(c.state),
        "created_at": iso(c.created_at), "answered_at": iso(c.answered_at), "ended_at": iso(c.ended_at),
        "end_reason": c.end_reason, "duration_s": c.duration_s,
        "transitions": [{**t, "at": iso(t["at"])} for t in c.transitions],
        "consent": c.consent,
        "recording": None if c.recording is None else {
            "url": f"/api/calls/{c.id}/recording", "started_at": iso(c.recording.get("started_at")),
            "stopped_at": iso(c.recording.get("stopped_at")), "bytes": c.recording.get("bytes"),
            "lost": bool(c.recording.get("lost"))},
    }
    if viewer is not None:
        body["direction"] = "outgoing" if viewer == str(c.caller_id) else "incoming"
    return body
