"""Retention holds at scale: one prune run clears a backlog far larger than an hour's intake."""

from __future__ import annotations

import datetime as dt
import time
import uuid

import pytest
import sqlalchemy as sa

from bench.scale import PRUNE_FACTOR, committed_e2e_rate
from worker.clock import seconds, utcnow
from worker.control.prune import prune
from worker.ledger import db
from worker.ledger.models import job_events, jobs
from worker.settings import get_settings

pytestmark = [pytest.mark.usefixtures("private_ledger"), pytest.mark.timeout(90)]

EXPIRED = 200_000

# One statement per table: 200k rows in a few seconds. Every fourth job has two events.
FILL_JOBS = """
INSERT INTO jobs (id, type, queue, priority, tenant, args, state, attempts, max_attempts, timeout_s,
                  backoff_s, delivery_id, created_at, updated_at, started_at, finished_at)
SELECT gen_random_uuid(), 'examples.echo', 'default', 0, 'tenant-' || (i % 7), '{"message": "x"}'::jsonb,
       (ARRAY['succeeded', 'dead', 'cancelled'])[1 + i % 3], 1, 3, 60, 2, gen_random_uuid(),
       :old - make_interval(secs => i), :old - make_interval(secs => i), :old - make_interval(secs => i),
       :old - make_interval(secs => i)
FROM generate_series(1, :n) AS i
"""
FILL_EVENTS = """
INSERT INTO job_events (job_id, at, from_state, to_state, actor, reason, attempt)
SELECT id, finished_at, s.from_state, s.to_state, 'test', 'fill', 1
FROM (SELECT id, finished_at FROM jobs WHERE tenant = 'tenant-1') AS j
CROSS JOIN (VALUES (NULL, 'queued'), ('queued', 'running')) AS s (from_state, to_state)
"""


@pytest.fixture(autouse=True)
def _empty_ledger() -> None:
    with db.begin() as conn:
        conn.execute(sa.text("TRUNCATE job_events, jobs"))


def _job(state: str, *, finished_at: dt.datetime | None, now: dt.datetime) -> uuid.UUID:
    job_id = uuid.uuid4()
    with db.begin() as conn:
        conn.execute(
            jobs.insert().values(
                id=job_id, type="examples.echo", queue="default", tenant="keep", args={}, state=state,
                max_attempts=3, timeout_s=60, backoff_s=2, delivery_id=uuid.uuid4(), created_at=now,
                updated_at=now, finished_at=finished_at,
            )
        )  # fmt: skip
        conn.execute(job_events.insert().values(job_id=job_id, at=now, to_state=state, actor="test", reason="x"))
    return job_id


def _count(table: sa.Table, *where: sa.ColumnElement[bool]) -> int:
    with db.connect() as conn:
        return int(conn.scalar(sa.select(sa.func.count()).select_from(table).where(*where)) or 0)


def test_one_prune_run_deletes_every_expired_job_and_its_events() -> None:
    """Given 200k expired finished jobs (some with events), a fresh finished job and a queued one,
    when prune runs once with a budget that allows it,
    then every expired job and its events are gone and the other two jobs are kept."""
    now = utcnow()
    retention = seconds(get_settings().retention_days * 86400)
    old = now - retention - dt.timedelta(hours=1)
    with db.begin() as conn:
        conn.execute(sa.text(FILL_JOBS), {"old": old, "n": EXPIRED})
        conn.execute(sa.text(FILL_EVENTS))
        conn.execute(sa.text("ANALYZE jobs; ANALYZE job_events"))
    expired_events = _count(job_events)
    assert expired_events > EXPIRED // 10
    fresh = _job("succeeded", finished_at=now - retention + dt.timedelta(hours=1), now=now)
    queued = _job("queued", finished_at=None, now=old)

    started = time.perf_counter()
    outcome = prune(now, budget_s=60)
    elapsed = time.perf_counter() - started

    rate = outcome["deleted"] / elapsed
    print(
        f"\nprune deleted {outcome['deleted']} jobs and {expired_events} events in {elapsed:.2f}s: {rate:,.0f} jobs/s"
    )
    assert outcome["deleted"] == EXPIRED
    assert _count(jobs) == 2
    assert _ids() == {fresh, queued}
    assert _count(job_events) == 2, "the events of deleted jobs must go with them"
    # Retention holds if prune outpaces the intake PRUNE_FACTOR times over; the intake is the
    # committed throughput run's end-to-end rate, the same one bench.scale compares prune with.
    intake = committed_e2e_rate()
    assert rate > PRUNE_FACTOR * intake, f"prune deletes {rate:.0f} jobs/s, intake {intake} jobs/s"


def test_prune_stops_when_its_budget_runs_out_and_the_next_run_goes_on() -> None:
    """A run past its budget leaves the rest for the next run instead of holding the loop's lock."""
    now = utcnow()
    old = now - seconds(get_settings().retention_days * 86400) - dt.timedelta(hours=1)
    with db.begin() as conn:
        conn.execute(sa.text(FILL_JOBS), {"old": old, "n": 5_000})
    first = prune(now, budget_s=0, batch=1000)
    assert first["deleted"] == 1000, "a zero budget still lets one batch through, so every run makes progress"
    assert prune(now, budget_s=60, batch=1000)["deleted"] == 4000
    assert _count(jobs) == 0


def _ids() -> set[uuid.UUID]:
    with db.connect() as conn:
        return set(conn.scalars(sa.select(jobs.c.id)))
