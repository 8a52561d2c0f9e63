"""When a schedule fires: interval or cron, in the schedule's time zone, stored and compared in UTC.

Pure functions of their arguments (no clock, no I/O), so tests pass any `now`.

An interval counts elapsed seconds from the previous fire: the zone does not move it. A cron
expression is read in the schedule's zone by cronsim, which keeps cron's behaviour across DST
(checked in tests/accept/test_fire_times.py, not assumed):

- spring forward: a time inside the skipped hour (02:30 on a day 02:00 jumps to 03:00) fires once,
  at the first instant after the jump (03:00); `*`-hour fields simply have no times in that hour;
- fall back: a time inside the repeated hour (02:30 on a day 03:00 goes back to 02:00) fires once,
  at its first occurrence; `*`-hour fields fire in both occurrences (every elapsed step).
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import zoneinfo
from dataclasses import dataclass

from cronsim import CronSim, CronSimError

from worker.errors import InvalidArgsError

MIN_EVERY_SECONDS = 1.0
"""The shortest interval: the fire loop runs about every second."""


@dataclass(frozen=True)
class Timing:
    """Exactly one of `every_seconds` and `cron`, and the zone a cron expression is read in."""

    every_seconds: float | None = None
    cron: str | None = None
    timezone: str = "UTC"

    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    def check(self) -> Timing:
        """The timing itself, once it is known to be one a schedule can keep.

        Raises:
            InvalidArgsError: both or neither of every_seconds and cron, an interval under
                MIN_EVERY_SECONDS, a cron expression cronsim refuses, an unknown time zone.
        """
        if (self.every_seconds is None) == (self.cron is None):
            raise InvalidArgsError("give exactly one of every_seconds and cron")
        try:
            zone = self.zone()
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise InvalidArgsError(f"unknown time zone {self.timezone!r}", timezone=self.timezone) from None
        if self.every_seconds is not None and not (
            math.isfinite(self.every_seconds) and self.every_seconds >= MIN_EVERY_SECONDS
        ):
            raise InvalidArgsError(f"every_seconds must be at least {MIN_EVERY_SECONDS:g}", limit=MIN_EVERY_SECONDS)
        if self.cron is not None:
            try:
                CronSim(self.cron, dt.datetime(2000, 1, 1, tzinfo=zone))
            except CronSimError as exc:
                raise InvalidArgsError(f"bad cron expression {self.cron!r}: {exc}", cron=self.cron) from None
        return self

    def next_after(self, after: dt.datetime) -> dt.datetime:
        """The first fire strictly after `after` (UTC in, UTC out)."""
        if self.every_seconds is not None:
            return after + dt.timedelta(seconds=self.every_seconds)
        assert self.cron is not None
        return next(CronSim(self.cron, after.astimezone(self.zone()))).astimezone(dt.UTC)

    def upcoming(self, after: dt.datetime, n: int) -> list[dt.datetime]:
        """The next `n` fires after `after`."""
        out: list[dt.datetime] = []
        for _ in range(n):
            after = self.next_after(after)
            out.append(after)
        return out


@dataclass(frozen=True)
class Plan:
    """What one run of the fire loop does with one schedule: the times to fire (oldest first),
    how many due times it skips as older than the catch-up window, and the next time to wait for."""

    fire: list[dt.datetime]
    skipped: int
    next_fire_at: dt.datetime


def plan(timing: Timing, next_fire_at: dt.datetime, now: dt.datetime, window_start: dt.datetime, limit: int) -> Plan:
    """The due times in [next_fire_at, now]: those before `window_start` are skipped, the others
    fired, at most `limit` of them handled per run (the next run goes on from `next_fire_at`)."""
    if timing.every_seconds is not None:
        return _plan_interval(timing.every_seconds, next_fire_at, now, window_start, limit)
    fire: list[dt.datetime] = []
    skipped = 0
    at = next_fire_at
    for _ in itertools.repeat(None, limit):
        if at > now:
            break
        if at < window_start:
            skipped += 1
        else:
            fire.append(at)
        at = timing.next_after(at)
    return Plan(fire, skipped, at)


def _plan_interval(
    every: float, next_fire_at: dt.datetime, now: dt.datetime, window_start: dt.datetime, limit: int
) -> Plan:
    """Arithmetic, not iteration: a week-long outage of a 1 s schedule is counted in one step."""
    step = dt.timedelta(seconds=every)
    if next_fire_at > now:
        return Plan([], 0, next_fire_at)
    due = math.floor((now - next_fire_at) / step) + 1
    skipped = 0
    if window_start > next_fire_at:
        skipped = min(due, math.ceil((window_start - next_fire_at) / step))
    fire_n = min(due - skipped, limit)
    first = next_fire_at + skipped * step
    fire = [first + i * step for i in range(fire_n)]
    return Plan(fire, skipped, first + fire_n * step)
