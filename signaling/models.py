"""The payloads of the call events, validated before any handler runs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from signaling.documents import Media

Id = Field(max_length=64)


class InviteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    callee: str = Id
    media: Media = "audio"


class CallRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    call_id: str = Id


class IceCandidate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    candidate: str = Field(max_length=2000)
    sdpMid: str | None = Field(None, max_length=64)  # the browser's RTCIceCandidateInit names
    sdpMLineIndex: int | None = Field(None, ge=0, le=255)
    usernameFragment: str | None = Field(None, max_length=256)


class ConsentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    call_id: str = Id
    record: bool


class MediaOfferIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    call_id: str = Id
    sdp: str = Field(min_length=1, max_length=200_000)


class SignalIn(BaseModel):
    """An SDP offer or answer, or an ICE candidate (``candidate: null`` ends the candidates)."""

    model_config = ConfigDict(extra="forbid")
    call_id: str = Id
    type: Literal["offer", "answer", "candidate"]
    sdp: str | None = Field(None, max_length=200_000)
    candidate: IceCandidate | None = None
    media: Media | None = None  # with an offer: the call's media from now on (audio -> video)

    @model_validator(mode="after")
    def _shape(self) -> SignalIn:
        if self.type in ("offer", "answer") and not self.sdp:
            raise ValueError(f"an {self.type} needs its sdp")
        if self.type != "offer" and self.media is not None:
            raise ValueError("media changes come with an offer")
        return self
