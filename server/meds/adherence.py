"""What happened to a patient's doses: those due in a window, and adherence (confirmed / (confirmed +
missed)) per medication and per week, weeks from Monday in the patient's time zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from server.care.access import require_patient
from server.care.documents import User
from server.core.documents import aware, iso, utcnow
from server.core.errors import ApiError
from server.core.identity import Client, Principal
from server.core.params import parse_time
from server.meds.documents import DoseEvent, dose_json
from server.meds.dose_times import zone

MAX_WINDOW = timedelta(days=31)
MAX_WEEKS = 52


async def doses_between(principal: Principal, client: Client, patient_id: str, start_raw: str | None,
                        end_raw: str | None) -> dict[str, Any]:
    """Doses due in ``[from, to)`` (default: the last day and the next), by due time; at most 31 days."""
    pid = await require_patient(principal, patient_id, "dose.list", client)
    now = utcnow()
    start = parse_time(start_raw, "from", now - timedelta(days=1))
    end = parse_time(end_raw, "to", now + timedelta(days=1))
    if not timedelta(0) < end - start <= MAX_WINDOW:
        raise ApiError("invalid_query", "to must be after from, at most 31 days later", 422)
    cursor = DoseEvent.get_pymongo_collection().find(
        {"patient_id": pid, "due_at": {"$gte": start, "$lt": end}}).sort("due_at", 1).limit(2000)
    return {"items": [dose_json(d) async for d in cursor]}


def _tally(counts: dict[str, int]) -> dict[str, Any]:
    decided = counts["confirmed"] + counts["missed"]
    return {**counts, "adherence": round(counts["confirmed"] / decided, 3) if decided else None}


async def adherence(principal: Principal, client: Client, patient_id: str, weeks_raw: str | None) -> dict[str, Any]:
    """Confirmed and missed doses per medication and per week over the last ``weeks`` (1 to 52, default 4)."""
    pid = await require_patient(principal, patient_id, "adherence.read", client)
    try:
        weeks = int(weeks_raw or "4")
    except ValueError:
        weeks = 0
    if not 1 <= weeks <= MAX_WEEKS:
        raise ApiError("invalid_query", f"weeks must be between 1 and {MAX_WEEKS}", 422, {"field": "weeks"})
    user = await User.get(pid)
    tz = zone(user.timezone if user else "UTC")
    now = utcnow()
    today = now.astimezone(tz).date()
    first = today - timedelta(days=today.weekday() + 7 * (weeks - 1))
    since = datetime.combine(first, datetime.min.time(), tz).astimezone(UTC)
    empty = {"due": 0, "confirmed": 0, "missed": 0, "pending": 0}
    per_med: dict[str, dict[str, Any]] = {}
    per_week: dict[str, dict[str, Any]] = {}
    cursor = DoseEvent.get_pymongo_collection().find(
        {"patient_id": pid, "due_at": {"$gte": since, "$lte": now}},
        {"medication_id": 1, "medication_name": 1, "due_at": 1, "state": 1})
    async for d in cursor:
        local = aware(d["due_at"]).astimezone(tz).date()
        week = (local - timedelta(days=local.weekday())).isoformat()
        outcome = d["state"] if d["state"] in ("confirmed", "missed") else "pending"
        med = per_med.setdefault(str(d["medication_id"]), {"name": d["medication_name"], **empty})
        wk = per_week.setdefault(week, {**empty, "medications": {}})
        wk_med = wk["medications"].setdefault(str(d["medication_id"]), dict(empty))
        for bucket in (med, wk, wk_med):
            bucket["due"] += 1
            bucket[outcome] += 1
    return {
        "patient_id": str(pid), "timezone": tz.key, "since": iso(since),
        "medications": [{"medication_id": k, "name": v.pop("name"), **_tally(v)} for k, v in per_med.items()],
        "weeks": [{"week_start": k, **_tally({c: v[c] for c in empty}),
                   "medications": {m: _tally(c) for m, c in v["medications"].items()}}
                  for k, v in sorted(per_week.items())],
    }
