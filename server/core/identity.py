"""Who is acting and from where: the identity every concern and transport passes around (a leaf)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from beanie import PydanticObjectId
from bson.errors import InvalidId

from server.core.errors import ApiError


@dataclass(frozen=True)
class Principal:
    """Who is acting: a user through one login session (``sid``), or a paired device
    (``role == "device"``, ``user_id`` its patient, ``sid`` the device's id)."""

    user_id: PydanticObjectId
    role: str
    sid: str
    name: str

    @property
    def is_device(self) -> bool:
        return self.role == "device"

    @property
    def id(self) -> str:
        return str(self.user_id)


@dataclass(frozen=True)
class Client:
    """Where a request came from, for the audit log and throttling."""

    addr: str | None = None
    user_agent: str | None = None

    @classmethod
    def of(cls, remote: str | None, forwarded_for: str | None, user_agent: str | None,
           trust_forwarded: bool) -> Client:
        """The transport's peer address; behind a trusted proxy (``trust_forwarded``) the address that proxy
        appended to ``X-Forwarded-For``, i.e. its last entry: the entries before it are whatever the client
        sent, so trusting the first would let anyone pick the address audited and rate-limited."""
        addr = remote
        if trust_forwarded and forwarded_for:
            addr = forwarded_for.rsplit(",", 1)[-1].strip() or remote
        return cls(addr=addr, user_agent=user_agent)


def as_object_id(value: Any, what: str = "id") -> PydanticObjectId:
    try:
        return PydanticObjectId(value)
    except (InvalidId, TypeError, ValueError):
        raise ApiError("invalid_id", f"The {what} is not a valid id", 422, {"field": what}) from None
