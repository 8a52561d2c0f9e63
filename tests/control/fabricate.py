"""Jobs made straight in the ledger for loop tests, which run the loops as functions of `now`:
an empty ledger, a queued job, a job claimed by a (possibly imaginary) worker process."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa

from worker.accept.validate import JobRequest, new_job
from worker.broker import inspect
from worker.clock import utcnow
from worker.ledger import control_state, db, transitions
from worker.ledger.models import JobRow, job_events, jobs
from worker.ledger.models import control_state as control_state_table
from worker.settings import get_settings


def empty_ledger() -> None:
    """No jobs, no events, and the broker's run_id already known (so reconcile sees no restart)."""
    with db.begin() as conn:
        conn.execute(sa.delete(job_events))
        conn.execute(sa.delete(jobs))
        conn.execute(sa.delete(control_state_table))
    control_state.put(control_state.BROKER_RUN_ID, inspect.run_id(), now=utcnow())


def queued_job(tenant: str, queue: str | None = None, **row: Any) -> JobRow:
    now = utcnow()
    base = new_job(JobRequest("examples.echo", {"message": "x"}, queue=queue or f"q-{uuid.uuid4().hex[:6]}"),
                     tenant=tenant, s=get_settings(), now=now)  # fmt: skip
    with db.begin() as conn:
        return transitions.create_jobs(conn, [{**base.row(), **row}], actor="test", now=now)[0]


def running_job(tenant: str, worker: str, pid: int, **row: Any) -> JobRow:
    """A queued job claimed by `worker`:`pid` with a 3 s lease."""
    job = queued_job(tenant, **row)
    with db.begin() as conn:
        claimed = transitions.claim(conn, job.id, job.delivery_id, worker=worker, pid=pid, now=utcnow(), lease_s=3)
    assert claimed is not None
    return claimed
