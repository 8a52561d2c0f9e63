"""The ledger's typed records and its one event row: a `Job` is every column of `jobs` in the
table's order, and every write, in either form, records the same event columns."""

from __future__ import annotations

import dataclasses

import sqlalchemy as sa

from tests.ledger.conftest import NewJob
from tests.ledger.make import a_new_job
from worker.clock import utcnow
from worker.ledger import queries, transitions
from worker.ledger.models import job_events, jobs
from worker.ledger.records import Job
from worker.ledger.states import JobState


def test_a_job_record_is_every_column_of_jobs_in_order() -> None:
    # Bug caught: a column added to (or moved in) the table but not the record: Job.of reads a
    # full row by position, so every value after it would land in the wrong field.
    assert [f.name for f in dataclasses.fields(Job)] == [c.name for c in jobs.c]


def test_a_row_of_the_columns_in_another_order_is_read_by_name(engine: sa.Engine, new_job: NewJob) -> None:
    # Bug caught: Job.of taking any row by position (a select naming its columns differently).
    job = new_job()
    with engine.connect() as conn:
        reordered = conn.execute(sa.select(*reversed(jobs.c)).where(jobs.c.id == job.id)).one()
    assert Job.of(reordered) == job


def _events(engine: sa.Engine, job_id: object) -> list[tuple[object, ...]]:
    columns = [c for c in job_events.c if c.name != "id"]
    with engine.connect() as conn:
        return [
            tuple(e)
            for e in conn.execute(sa.select(*columns).where(job_events.c.job_id == job_id).order_by(job_events.c.id))
        ]


def test_every_form_of_write_records_every_event_column(engine: sa.Engine) -> None:
    # Bug caught: one of the forms (the batch insert, the insert once, the fenced hot statement,
    # the general change; a CTE on PostgreSQL, a row on SQLite) leaving a column out or wrong.
    created_at, claimed_at, given_at = utcnow(), utcnow(), utcnow()
    plain, keyed = a_new_job(max_attempts=1), a_new_job(idempotency_key="events-k")
    with engine.begin() as conn:
        [job] = transitions.create_jobs(conn, [plain], actor="creator", now=created_at)
        once = transitions.create_job_once(conn, keyed, actor="once", now=created_at)
        claimed = transitions.claim(conn, job.id, job.delivery_id, worker="w", pid=7, now=claimed_at, lease_s=5)
        assert once is not None and claimed is not None
        dead = transitions.give_back(conn, claimed, reason="error", actor="w:7", now=given_at, max_backoff_s=1)
    assert dead is not None and dead.state == JobState.DEAD
    d = job.delivery_id
    assert _events(engine, job.id) == [
        (job.id, created_at, None, "queued", "creator", "enqueued", d, 0, None),
        (job.id, claimed_at, "queued", "running", "w:7", "claimed", d, 1, None),
        (job.id, given_at, "running", "dead", "w:7", "error", d, 1, "gave up after 1 attempt(s)"),
    ]
    assert _events(engine, once.id) == [
        (once.id, created_at, None, "queued", "once", "enqueued", once.delivery_id, 0, None)
    ]
    with engine.connect() as conn:  # and the records read back are the records the writes returned
        assert queries.get_job(conn, job.id) == dead
