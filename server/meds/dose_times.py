"""When doses are due: times of day in the patient's IANA time zone turned into UTC instants.

Pure (standard library only). Daylight-saving changes are handled explicitly:
- a wall time that does not exist (the spring-forward gap) fires at the first valid instant after
  it, i.e. the moment the clocks jump (02:30 on a 02:00→03:00 day fires at 03:00);
- a wall time that happens twice (the fall-back fold) fires once, at its first occurrence.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class PlannedDose:
    local_date: date
    local_time: time
    due: datetime  # aware, UTC

    @property
    def key(self) -> str:
        """The planned wall-clock slot, unique per medication: ``2026-03-08T02:30``."""
        return f"{self.local_date.isoformat()}T{self.local_time.strftime('%H:%M')}"


def _exists(naive: datetime, tz: ZoneInfo) -> bool:
    return datetime.fromtimestamp(naive.replace(tzinfo=tz).timestamp(), tz).replace(tzinfo=None) == naive


def resolve_local(day: date, at: time, tz: ZoneInfo) -> datetime:
    """The UTC instant a wall time on a given day fires at (see the module note for gaps and folds)."""
    naive = datetime.combine(day, at)
    if _exists(naive, tz):
        return naive.replace(tzinfo=tz, fold=0).astimezone(UTC)  # fold=0: the first of two occurrences
    # In a gap, fold=1 reads the wall time with the offset after the jump (an earlier instant) and
    # fold=0 with the offset before it (a later one); the jump lies between. Find it to the second.
    lo = int(naive.replace(tzinfo=tz, fold=1).timestamp())
    hi = int(naive.replace(tzinfo=tz, fold=0).timestamp())
    after = datetime.fromtimestamp(hi, tz).utcoffset()
    while lo < hi:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == after:
            hi = mid
        else:
            lo = mid + 1
    return datetime.fromtimestamp(lo, UTC)


def dose_times(times: Iterable[time], tz: ZoneInfo, start: datetime, end: datetime, *,
               days: Iterable[str] = WEEKDAYS, first_day: date | None = None,
               last_day: date | None = None) -> Iterator[PlannedDose]:
    """Every dose due in ``[start, end)`` (aware datetimes), in order: for each local day the
    schedule covers (``days`` of the week, between ``first_day`` and ``last_day`` inclusive),
    each of ``times``. Each wall-clock slot yields at most one dose."""
    wanted = {WEEKDAYS.index(d) for d in days}
    slots = sorted(set(times))
    day = start.astimezone(tz).date() - timedelta(days=1)
    stop = end.astimezone(tz).date() + timedelta(days=1)
    while day <= stop:
        if day.weekday() in wanted and (first_day is None or day >= first_day) and (
                last_day is None or day <= last_day):
            for at in slots:
                due = resolve_local(day, at, tz)
                if start <= due < end:
                    yield PlannedDose(day, at, due)
        day += timedelta(days=1)


def parse_hhmm(value: str) -> time:
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


def zone(name: str) -> ZoneInfo:
    """The patient's IANA time zone; UTC if the name is not one."""
    try:
        return ZoneInfo(name)
    except Exception:
        return ZoneInfo("UTC")
