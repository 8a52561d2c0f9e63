"""Schedules fired by real beats and control workers (`celery beat`, `celery worker -Q medic.control`
processes), on this module's own ledger. The fired jobs go to a queue nobody consumes, so the
broker's depth counts how often each was published.

Given / When / Then; waits are on the ledger or the clock, never a sleep of a guessed length."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from worker.accept.fire_times import Timing
from worker.accept.schedules import ScheduleSpec, new_values
from worker.broker import inspect
from worker.ledger import apikeys, db
from worker.ledger import schedules as ledger
from worker.ledger.models import job_events, jobs
from worker.ledger.schedules import Schedule
from worker.ops.processes import CELERY
from worker.testing.processes import Proc, Processes, wait_for

pytestmark = pytest.mark.slow
SECOND = dt.timedelta(seconds=1)


def make(every: float, queue: str, **kw: Any) -> Schedule:
    now = dt.datetime.now(dt.UTC)
    spec = ScheduleSpec(
        name=uuid.uuid4().hex[:8],
        type="examples.echo",
        timing=Timing(every_seconds=every),
        args={"message": "tick"},
        queue=queue,
        **kw,
    )
    with db.begin() as conn:
        made = ledger.create(conn, new_values(spec, tenant="sched", origin="api", now=now), actor="test", now=now)
    assert made is not None
    return made


def reread(s: Schedule) -> Schedule:
    with db.connect() as conn:
        found = ledger.get(conn, s.id)
    assert found is not None
    return found


def fired_jobs(s: Schedule) -> list[tuple[dt.datetime, dt.datetime]]:
    """(scheduled_for, created_at) of every job the schedule fired, in scheduled order."""
    with db.connect() as conn:
        rows = conn.execute(
            sa.select(jobs.c.scheduled_for, jobs.c.created_at)
            .where(jobs.c.schedule_id == s.id)
            .order_by(jobs.c.scheduled_for)
        )
        return [(r[0], r[1]) for r in rows]


def beat(procs: Processes, tmp_path: Path, name: str) -> Proc:
    """A beat with a schedule file of its own (two beats must not share one)."""
    return procs.start(name, [*CELERY, "beat", "--loglevel", "INFO", "--schedule", str(tmp_path / name)])


def wait_until(moment: float, what: str) -> None:
    wait_for(lambda: time.time() >= moment, moment - time.time() + 10, 0.1, what)


@pytest.mark.timeout(240)
def test_two_beats_and_two_control_workers_fire_each_time_once(cprocs: Processes, tmp_path: Path) -> None:
    # Given a 1 s schedule, two control workers and two beats
    queue = f"q-once-{uuid.uuid4().hex[:6]}"
    cprocs.control("control-1")
    cprocs.control("control-2")
    s = make(1, queue, overlap="allow")
    beat(cprocs, tmp_path, "beat-1")
    beat(cprocs, tmp_path, "beat-2")
    # When they run for 30 s of the schedule
    first = wait_for(lambda: fired_jobs(s)[:1], 60, 0.2, "a first fire")[0][0]
    wait_for(lambda: (reread(s).last_fire_at or first) >= first + 30 * SECOND, 90, 0.2, "30 s of fires")
    cprocs.stop_all()
    # Then each second from the first fire to the last is one job, published once
    times = [at for at, _ in fired_jobs(s)]
    assert times == [first + k * SECOND for k in range(len(times))], "a time fired twice, or one missed"
    assert len(times) >= 31
    after = reread(s)
    assert after.fired == len(times) and after.skipped == 0
    assert inspect.depth(queue) == len(times), "each fire published once"
    with db.connect() as conn:
        created = conn.execute(
            sa.select(sa.func.count())
            .select_from(job_events.join(jobs, jobs.c.id == job_events.c.job_id))
            .where(jobs.c.schedule_id == s.id, job_events.c.reason == "enqueued")
        ).scalar_one()
    assert created == len(times)


@pytest.mark.timeout(180)
def test_a_schedule_paused_for_5_s_fires_nothing_in_that_window(cprocs: Processes, tmp_path: Path) -> None:
    # Given a 1 s schedule firing, with the API
    queue = f"q-pause-{uuid.uuid4().hex[:6]}"
    with db.begin() as conn:
        key = apikeys.create_key(conn, "sched", apikeys.parse_scopes("submit,read"))
    _, url = cprocs.api("api")
    cprocs.control("control")
    s = make(1, queue, overlap="allow")
    beat(cprocs, tmp_path, "beat")
    wait_for(lambda: reread(s).fired >= 2, 60, 0.2, "fires before the pause")
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=15) as api:
        # When it is paused for 5 s, then resumed
        assert api.patch(f"/schedules/{s.id}", json={"paused": True}).status_code == 200
        paused_at = dt.datetime.now(dt.UTC)
        wait_until(time.time() + 5, "5 s paused")
        resumed_at = dt.datetime.now(dt.UTC)
        assert api.patch(f"/schedules/{s.id}", json={"paused": False}).status_code == 200
    wait_for(lambda: (reread(s).last_fire_at or paused_at) > resumed_at, 30, 0.2, "a fire after the resume")
    cprocs.stop_all()
    # Then no job was made in the window, and none for a time in it
    made = fired_jobs(s)
    assert not [c for _, c in made if paused_at < c < resumed_at], "a fire made while paused"
    assert not [at for at, _ in made if paused_at < at <= resumed_at], "a paused-over time fired after the resume"
    assert made[-1][0] > resumed_at


@pytest.mark.timeout(180)
def test_after_a_20_s_beat_outage_only_the_catch_up_window_fires(cprocs: Processes, tmp_path: Path) -> None:
    # Given a 2 s schedule with a 5 s catch-up window, firing
    queue = f"q-outage-{uuid.uuid4().hex[:6]}"
    cprocs.control("control")
    s = make(2, queue, overlap="allow", catch_up_seconds=5)
    first_beat = beat(cprocs, tmp_path, "beat")
    wait_for(lambda: reread(s).fired >= 2, 60, 0.2, "fires before the outage")
    # When beat is stopped (SIGTERM) for 20 s and started again
    first_beat.stop()
    stopped_at = dt.datetime.now(dt.UTC)
    wait_until(time.time() + 20, "20 s without beat")
    restarted_at = dt.datetime.now(dt.UTC)
    beat(cprocs, tmp_path, "beat-again")
    wait_for(lambda: (reread(s).last_fire_at or stopped_at) > restarted_at + 4 * SECOND, 60, 0.2, "fires again")
    cprocs.stop_all()
    # Then no fire was made more than 5 s after its time; the older ones were skipped and counted
    made = fired_jobs(s)
    late = [(at, c) for at, c in made if c - at > 5 * SECOND]
    assert not late, f"fires made past the catch-up window: {late}"
    caught_up = [at for at, c in made if c > restarted_at and at < restarted_at]
    assert caught_up, "the times inside the window were made after the restart"
    times = [at for at, _ in made]
    grid = int((times[-1] - times[0]) / (2 * SECOND)) + 1
    after = reread(s)
    assert after.skipped == grid - len(times) >= 5, "every time not fired is counted as skipped"
    assert after.fired == len(times)
