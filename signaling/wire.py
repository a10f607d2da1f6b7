"""What the calls concern sends: calls as each side sees them, the signalling relayed between them, and
the relay's offers, as replies and pushed events."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from server.core.wire import Time, Wire
from signaling.documents import Media
from signaling.models import IceCandidate

State = Literal["ringing", "active", "reconnecting", "ended"]
EndReason = Literal["rejected", "cancelled", "missed", "busy", "hangup", "connection_lost", "link_revoked"]


class Party(Wire):
    id: str
    name: str | None


class Transition(Wire):
    state: State
    action: str
    at: Time
    by: str | None


class Recording(Wire):
    url: str
    started_at: Time | None
    stopped_at: Time | None
    bytes: int | None
    lost: bool


class CallOut(Wire):
    """A call; ``direction`` is the caller's view (outgoing) or the callee's (incoming)."""

    id: str
    patient_id: str
    media: Media
    state: State
    caller: Party
    callee: Party
    outcome: str = Field(description="The end reason once ended, else the state")
    created_at: Time
    answered_at: Time | None
    ended_at: Time | None
    end_reason: EndReason | None
    duration_s: float | None
    transitions: list[Transition]
    consent: dict[str, bool] = Field(description="Each participant's consent to recording")
    recording: Recording | None
    direction: Literal["outgoing", "incoming"] | None = None


class InviteReply(CallOut):
    glare: bool | None = Field(None, description="Both called each other at once: this is the other's call, "
                                                 "accepted")


class Joined(CallOut):
    relay: Literal[True] = Field(description="The media goes through the server from now on")
    slots: int = Field(description="How many others each member hears")


class Ongoing(CallOut):
    joined: list[str] = Field(description="The clinicians who joined (through the relay)")


class Relayed(Wire):
    relayed: Literal["offer", "answer", "candidate"]


class Answer(Wire):
    type: Literal["answer"]
    sdp: str


class CallIdOnly(Wire):
    call_id: str


class CallEnded(Wire):
    call_id: str
    reason: EndReason | None
    duration_s: float | None


class PeerSignal(Wire):
    call_id: str
    type: Literal["offer", "answer", "candidate"]
    sdp: str | None = None
    candidate: IceCandidate | None = None
    media: Media
    from_user: str


class PeerDropped(Wire):
    call_id: str
    user_id: str
    grace_s: float = Field(description="How long the call waits for them")


class PeerResumed(Wire):
    call_id: str
    user_id: str


class RelayJoined(Wire):
    id: str
    name: str | None


class CallRelay(Wire):
    """Connect your media to the server (call:media-offer): someone joined, or recording began."""

    call_id: str
    reason: Literal["join", "recording"]
    joined: RelayJoined | None = None
    slots: int


class PatientCall(Wire):
    patient_id: str
    call_id: str
    state: State
    media: Media


class IceServer(Wire):
    urls: list[str]
    username: str | None = None
    credential: str | None = None


class IceServers(Wire):
    ice_servers: list[IceServer]
    ttl_s: int
    expires_at: int = Field(description="Unix time")


