"""What the overview page shows: the queues, the alerts, the workers, and the last hour as small
charts, from data medic keeps anyway (the ledger's finished jobs, the health loop's samples)."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

from worker.clock import utcnow
from worker.control import snapshot
from worker.ledger import db, queries

HOUR_MINUTES = 60
SUCCEEDED = "succeeded"
FAILED = ("dead", "cancelled")


@dataclass(frozen=True)
class Chart:
    """One series drawn as an SVG polyline: `points` in a 0..width x 0..height box."""

    title: str
    unit: str
    latest: float
    peak: float
    points: str
    width: int = 600
    height: int = 80


def _polyline(values: list[float], xs: list[float], width: int, height: int) -> tuple[str, float]:
    """The points of a line over the hour: `xs` place each value between 0 (an hour ago) and 1 (now)."""
    peak = max(values, default=0.0)
    scale = (height - 4) / peak if peak > 0 else 0.0
    return " ".join(f"{x * width:.1f},{height - 2 - v * scale:.1f}" for x, v in zip(xs, values, strict=True)), peak


def chart(title: str, unit: str, values: list[float], xs: list[float] | None = None) -> Chart:
    """One series; `xs` (0..1 along the hour) default to evenly spaced values (minutes)."""
    if xs is None:
        xs = [i / max(1, len(values) - 1) for i in range(len(values))]
    points, peak = _polyline(values, xs, 600, 80)
    return Chart(title=title, unit=unit, latest=values[-1] if values else 0.0, peak=peak, points=points)


def finished_charts(tenant: str | None) -> list[Chart]:
    """Jobs succeeded and failed (dead or cancelled) per minute over the last hour: one tenant's,
    or every tenant's (None, admin)."""
    now = utcnow()
    first = int(now.timestamp()) // 60 - HOUR_MINUTES + 1
    with db.connect() as conn:
        rows = queries.finished_per_minute(conn, dt.datetime.fromtimestamp(first * 60, dt.UTC), tenant)
    ok = [0.0] * HOUR_MINUTES
    failed = [0.0] * HOUR_MINUTES
    for minute, state, n in rows:
        i = minute - first
        if 0 <= i < HOUR_MINUTES:
            if state == SUCCEEDED:
                ok[i] += n
            elif state in FAILED:
                failed[i] += n
    return [
        chart("Succeeded per minute", "jobs/min", ok),
        chart("Failed per minute (dead, cancelled)", "jobs/min", failed),
    ]


def depth_chart() -> Chart | None:
    """Jobs queued (all queues) over the last hour, from the health loop's samples; None before any."""
    now = time.time()
    samples = snapshot.history(now - 3600)
    if not samples:
        return None
    xs = [max(0.0, 1 - (now - s["at"]) / 3600) for s in samples]  # placed by time: a gap shows as one
    return chart("Queued jobs, all queues", "jobs", [float(sum(s["queued"].values())) for s in samples], xs)


def cluster() -> dict[str, Any]:
    """The latest snapshot's queue gauges and workers, and its age; empty when the loop is not running."""
    snap = snapshot.read()
    if snap is None:
        return {"queues": {}, "workers_live": None, "age": None}
    return {"queues": snap["queues"], "workers_live": snap["workers_live"], "age": snapshot.age(snap)}
