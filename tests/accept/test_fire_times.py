"""Fire times with a fixed clock: interval, cron in a zone across both DST changes, the catch-up
window and the bound per run. No I/O."""

from __future__ import annotations

import datetime as dt

import pytest

from worker.accept.fire_times import Plan, Timing, plan
from worker.errors import InvalidArgsError

UTC = dt.UTC
BERLIN = "Europe/Berlin"  # 2026: forward on 29 March 02:00 -> 03:00, back on 25 October 03:00 -> 02:00


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def fires(timing: Timing, start: dt.datetime, until: dt.datetime) -> list[dt.datetime]:
    """Every fire in (start, until], one step at a time, as the fire loop makes them."""
    out, at = [], timing.next_after(start)
    while at <= until:
        out.append(at)
        at = timing.next_after(at)
    return out


def test_a_daily_time_in_the_repeated_hour_fires_once_at_its_first_occurrence() -> None:
    timing = Timing(cron="30 2 * * *", timezone=BERLIN).check()
    got = fires(timing, utc(2026, 10, 24, 12), utc(2026, 10, 26, 12))
    # 02:30 CEST (00:30Z) on the 25th, not again at 02:30 CET (01:30Z); then 02:30 CET on the 26th
    assert got == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]


def test_a_daily_time_in_the_skipped_hour_fires_once_right_after_the_jump() -> None:
    timing = Timing(cron="30 2 * * *", timezone=BERLIN).check()
    got = fires(timing, utc(2026, 3, 28, 12), utc(2026, 3, 30, 12))
    # 02:30 does not exist on the 29th: 03:00 CEST (01:00Z); on the 30th 02:30 CEST (00:30Z)
    assert got == [utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 30)]


def test_an_hourly_cron_follows_elapsed_hours_across_both_changes() -> None:
    timing = Timing(cron="0 * * * *", timezone=BERLIN).check()
    back = fires(timing, utc(2026, 10, 24, 23, 30), utc(2026, 10, 25, 3, 30))
    assert back == [utc(2026, 10, 25, h) for h in range(4)]  # 02:00 local twice: both are real hours
    forward = fires(timing, utc(2026, 3, 28, 23, 30), utc(2026, 3, 29, 3, 30))
    assert forward == [utc(2026, 3, 29, h) for h in range(4)]  # 01:00, 03:00, 04:00, 05:00 local


def test_a_cron_is_read_in_its_zone_not_in_utc() -> None:
    timing = Timing(cron="0 9 * * *", timezone="America/New_York").check()
    assert timing.next_after(utc(2026, 7, 1, 0)) == utc(2026, 7, 1, 13)  # 09:00 EDT


def test_an_interval_counts_elapsed_seconds_whatever_the_zone() -> None:
    timing = Timing(every_seconds=3600, timezone=BERLIN).check()
    got = fires(timing, utc(2026, 10, 24, 23, 0), utc(2026, 10, 25, 3, 0))
    assert got == [utc(2026, 10, 25, h) for h in range(4)]


def test_due_times_older_than_the_window_are_skipped_and_counted() -> None:
    timing = Timing(every_seconds=2).check()
    start, now = utc(2026, 1, 1, 0, 0, 0), utc(2026, 1, 1, 0, 0, 20)
    got = plan(timing, start, now, window_start=now - dt.timedelta(seconds=5), limit=100)
    # due: 0, 2, ... 20 (11 times); in [15, 20]: 16, 18, 20
    assert got == Plan([utc(2026, 1, 1, 0, 0, s) for s in (16, 18, 20)], 8, utc(2026, 1, 1, 0, 0, 22))


def test_cron_catch_up_skips_the_same_way() -> None:
    timing = Timing(cron="* * * * *").check()
    start, now = utc(2026, 1, 1, 0, 0), utc(2026, 1, 1, 0, 10)
    got = plan(timing, start, now, window_start=now - dt.timedelta(minutes=2), limit=100)
    assert got == Plan([utc(2026, 1, 1, 0, m) for m in (8, 9, 10)], 8, utc(2026, 1, 1, 0, 11))


def test_nothing_is_due_before_the_next_fire() -> None:
    timing = Timing(every_seconds=60).check()
    at = utc(2026, 1, 1, 0, 1)
    assert plan(timing, at, utc(2026, 1, 1, 0, 0, 59), window_start=utc(2026, 1, 1), limit=10) == Plan([], 0, at)


def test_a_run_handles_at_most_its_limit_and_the_next_run_goes_on() -> None:
    timing = Timing(every_seconds=1).check()
    start, now = utc(2026, 1, 1), utc(2026, 1, 1, 0, 0, 9)
    first = plan(timing, start, now, window_start=start, limit=4)
    assert first.fire == [utc(2026, 1, 1, 0, 0, s) for s in range(4)] and first.next_fire_at == utc(2026, 1, 1, 0, 0, 4)
    second = plan(timing, first.next_fire_at, now, window_start=start, limit=100)
    assert second.fire == [utc(2026, 1, 1, 0, 0, s) for s in range(4, 10)]


@pytest.mark.parametrize(
    "timing",
    [
        Timing(),
        Timing(every_seconds=5, cron="* * * * *"),
        Timing(cron="61 * * * *"),
        Timing(cron="not cron"),
        Timing(every_seconds=0.5),
        Timing(every_seconds=float("nan")),
        Timing(cron="* * * * *", timezone="Mars/Olympus"),
        Timing(cron="* * * * *", timezone="../etc/passwd"),
    ],
)
def test_a_timing_a_schedule_cannot_keep_is_refused(timing: Timing) -> None:
    with pytest.raises(InvalidArgsError):
        timing.check()
