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


def as_object_id(value: Any, what: str = "id") -> PydanticObjectId:
    try:
        return PydanticObjectId(value)
    except (InvalidId, TypeError, ValueError):
        raise ApiError("invalid_id", f"The {what} is not a valid id", 422, {"field": what}) from None
