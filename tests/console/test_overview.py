"""The overview's hour charts: jobs finished per minute from the ledger, queue depth from the
health loop's samples."""

from __future__ import annotations

import datetime as dt
import time
import uuid

import pytest

from api.console import overview
from worker.broker import redis_keys
from worker.broker.redis_client import get_redis
from worker.clock import utcnow
from worker.control import snapshot
from worker.ledger import db
from worker.ledger.models import jobs


def _finished(tenant: str, state: str, minutes_ago: float) -> dict[str, object]:
    now = utcnow()
    return {
        "id": uuid.uuid4(), "type": "examples.echo", "queue": "default", "tenant": tenant, "args": {},
        "state": state, "max_attempts": 1, "timeout_s": 10.0, "backoff_s": 0.0, "delivery_id": uuid.uuid4(),
        "created_at": now, "updated_at": now, "finished_at": now - dt.timedelta(minutes=minutes_ago),
    }  # fmt: skip


def test_finished_jobs_land_in_their_minute_of_the_hour(medic_env: dict[str, str]) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    rows = [_finished(tenant, "succeeded", 5.2) for _ in range(3)]
    rows += [_finished(tenant, "dead", 5.2), _finished(tenant, "cancelled", 2.5), _finished(tenant, "succeeded", 61)]
    with db.begin() as conn:
        conn.execute(jobs.insert(), rows)
    ok, failed = overview.finished_charts(tenant)
    # Bugs caught: a bucket off by one minute or by the hour; the 61-minute-old job counted; dead
    # and cancelled jobs not counted as failed, or counted as succeeded; another tenant counted.
    assert (ok.peak, failed.peak) == (3.0, 1.0)
    points = [float(p.split(",")[1]) for p in ok.points.split()]
    assert len(points) == overview.HOUR_MINUTES and points.count(min(points)) == 1
    assert points.index(min(points)) in (overview.HOUR_MINUTES - 7, overview.HOUR_MINUTES - 6)  # 5.2 min ago
    failures = [float(p.split(",")[1]) for p in failed.points.split()]
    assert sum(y < ok.height - 2 for y in failures) == 2  # the dead one and the cancelled one, apart


@pytest.mark.usefixtures("medic_env")
def test_the_depth_chart_reads_the_health_loops_samples_oldest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    r = get_redis()
    r.delete(redis_keys.ops_history())
    assert overview.depth_chart() is None  # no sample yet: no chart (not a flat line at 0)
    monkeypatch.setattr(snapshot, "HISTORY_MAX", 4)
    now = time.time()
    for age, queued in (
        (5000, {"a": 77}),
        (4000, {"a": 99}),
        (180, {"a": 5}),
        (120, {"a": 1, "b": 2}),
        (60, {"a": 10}),
    ):
        snap = {"at": now - age, "workers_live": 1, "queues": {q: {"queued": n} for q, n in queued.items()}}
        snapshot.publish(snap)  # type: ignore[arg-type]
    # Bugs caught: the list not trimmed (5 kept), read newest first, samples over an hour old kept,
    # a queue's depth left out of the sum.
    assert r.llen(redis_keys.ops_history()) == 4
    assert [s["queued"] for s in snapshot.history(now - 3600)] == [{"a": 5}, {"a": 1, "b": 2}, {"a": 10}]
    chart = overview.depth_chart()
    assert chart is not None and (chart.peak, chart.latest) == (10.0, 10.0)
    heights = [float(p.split(",")[1]) for p in chart.points.split()]
    assert heights[1] > heights[0] > heights[2]  # 5, 3, 10 jobs: y grows downwards in SVG
    r.delete(redis_keys.ops_history())


@pytest.mark.usefixtures("medic_env")
def test_depth_samples_are_placed_by_their_time_on_the_hour() -> None:
    r = get_redis()
    r.delete(redis_keys.ops_history())
    now = time.time()
    for age in (1800, 900):  # half an hour and a quarter of an hour ago
        snapshot.publish({"at": now - age, "workers_live": 1, "queues": {"a": {"queued": 1}}})  # type: ignore[typeddict-item]
    chart = overview.depth_chart()
    assert chart is not None
    # Bug caught: samples spread evenly over the width whatever their age (two samples drawn as the whole hour).
    xs = [float(p.split(",")[0]) for p in chart.points.split()]
    assert xs == pytest.approx([chart.width * 0.5, chart.width * 0.75], abs=2)
    r.delete(redis_keys.ops_history())
