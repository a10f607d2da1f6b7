"""Values clients give as text (a query string's), parsed the same way by every concern."""

from __future__ import annotations

from datetime import datetime

from server.core.documents import aware
from server.core.errors import ApiError


def parse_time(raw: str | None, name: str, default: datetime) -> datetime:
    """An ISO 8601 time (``Z`` or an offset; one without is UTC); ``default`` when absent or empty, as a form
    leaves a field nobody filled in. Anything else is refused (422 ``invalid_query`` naming the field)."""
    if not raw:
        return default
    try:
        return aware(datetime.fromisoformat(raw.replace("Z", "+00:00")))
    except ValueError:
        raise ApiError("invalid_query", f"{name} must be an ISO 8601 time", 422, {"field": name}) from None
