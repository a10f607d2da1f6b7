"""Dose times from a schedule in the patient's time zone, daylight-saving changes included (pure, no I/O)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from server.meds.dose_times import dose_times, resolve_local

NY = ZoneInfo("America/New_York")  # 2026: spring forward Mar 8 02:00→03:00, fall back Nov 1 02:00→01:00
LISBON = ZoneInfo("Europe/Lisbon")  # 2026: Mar 29 01:00→02:00, Oct 25 02:00→01:00
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")  # half-hour shift: Oct 4 2026 02:00→02:30


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_ordinary_days_follow_the_offset_of_the_day() -> None:
    assert resolve_local(date(2026, 1, 15), time(8, 0), NY) == utc(2026, 1, 15, 13, 0)  # EST, -5
    assert resolve_local(date(2026, 7, 15), time(8, 0), NY) == utc(2026, 7, 15, 12, 0)  # EDT, -4
    assert resolve_local(date(2026, 7, 15), time(8, 0), LISBON) == utc(2026, 7, 15, 7, 0)


def test_a_time_in_the_spring_gap_fires_when_the_clocks_jump() -> None:
    # 02:30 does not exist in New York on 8 March 2026: it fires at 03:00 EDT (07:00 UTC), the first valid instant.
    assert resolve_local(date(2026, 3, 8), time(2, 30), NY) == utc(2026, 3, 8, 7, 0)
    assert resolve_local(date(2026, 3, 8), time(2, 0), NY) == utc(2026, 3, 8, 7, 0)
    assert resolve_local(date(2026, 3, 8), time(3, 0), NY) == utc(2026, 3, 8, 7, 0)  # same instant, real time
    assert resolve_local(date(2026, 3, 8), time(1, 59), NY) == utc(2026, 3, 8, 6, 59)
    assert resolve_local(date(2026, 3, 29), time(1, 15), LISBON) == utc(2026, 3, 29, 1, 0)
    assert resolve_local(date(2026, 10, 4), time(2, 15), LORD_HOWE) == utc(2026, 10, 3, 15, 30)  # 02:30 +11


def test_a_repeated_time_on_fall_back_fires_once_at_its_first_occurrence() -> None:
    # 01:30 happens twice in New York on 1 November 2026 (EDT, then EST): once, at 05:30 UTC.
    assert resolve_local(date(2026, 11, 1), time(1, 30), NY) == utc(2026, 11, 1, 5, 30)
    doses = list(dose_times([time(1, 30)], NY, utc(2026, 10, 31), utc(2026, 11, 3)))
    assert [d.due for d in doses] == [utc(2026, 10, 31, 5, 30), utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)]
    assert [d.key for d in doses] == ["2026-10-31T01:30", "2026-11-01T01:30", "2026-11-02T01:30"]


def test_spring_forward_day_keeps_every_slot_once_and_in_order() -> None:
    times = [time(1, 30), time(2, 30), time(3, 0), time(8, 0)]
    doses = list(dose_times(times, NY, utc(2026, 3, 8, 5), utc(2026, 3, 8, 23)))
    assert [d.key for d in doses] == ["2026-03-08T01:30", "2026-03-08T02:30", "2026-03-08T03:00", "2026-03-08T08:00"]
    assert [d.due.hour * 60 + d.due.minute for d in doses] == [6 * 60 + 30, 7 * 60, 7 * 60, 12 * 60]


def test_days_of_week_first_and_last_day_and_the_window() -> None:
    start, end = utc(2026, 11, 23), utc(2026, 12, 7)  # Monday 23 Nov to Monday 7 Dec
    doses = list(dose_times([time(9, 0)], LISBON, start, end, days=["mon", "fri"],
                            first_day=date(2026, 11, 25), last_day=date(2026, 12, 4)))
    assert [d.key for d in doses] == ["2026-11-27T09:00", "2026-11-30T09:00", "2026-12-04T09:00"]
    # The window is half-open and in UTC: a dose exactly at its end is left for the next window.
    at = resolve_local(date(2026, 11, 27), time(9, 0), LISBON)
    assert [d.due for d in dose_times([time(9, 0)], LISBON, at, at + timedelta(days=1))] == [at]
    assert [d.key for d in dose_times([time(9, 0)], LISBON, at - timedelta(days=1), at)] == ["2026-11-26T09:00"]


def test_zones_far_from_utc_plan_the_right_local_day() -> None:
    kiritimati = ZoneInfo("Pacific/Kiritimati")  # +14
    doses = list(dose_times([time(0, 30), time(23, 30)], kiritimati, utc(2026, 6, 1), utc(2026, 6, 2)))
    assert [(d.key, d.due) for d in doses] == [("2026-06-01T23:30", utc(2026, 6, 1, 9, 30)),
                                              ("2026-06-02T00:30", utc(2026, 6, 1, 10, 30))]
