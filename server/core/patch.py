"""Partial updates (``PATCH /api/me``, ``bp:update``, ``med:update``, ``contacts:update``): only the
fields given change, and ``null`` clears an optional field. A required one (``keep``) cannot be
cleared: ``null`` there is refused like any invalid value, before anything is stored."""

from __future__ import annotations

from typing import ClassVar, Self

from pydantic import BaseModel, ConfigDict, model_validator


class Patch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keep: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="after")
    def _keep_required(self) -> Self:
        cleared = sorted(name for name in self.keep & self.model_fields_set if getattr(self, name) is None)
        if cleared:
            raise ValueError(f"{', '.join(cleared)} cannot be cleared")
        return self
