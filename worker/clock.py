"""Time, in one place, always timezone-aware UTC. Loops take `now` as a parameter in tests."""

from __future__ import annotations

import datetime as dt


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def seconds(value: float) -> dt.timedelta:
    return dt.timedelta(seconds=value)
