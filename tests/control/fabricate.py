"""Jobs made straight in the ledger for loop tests, which run the loops as functions of `now`:
an empty ledger, a queued job, a job claimed by a (possibly imaginary) worker process."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa

from tests.ledger.make import a_new_job
from worker.broker import inspect
from worker.clock import utcnow
from worker.ledger import control_state, db, transitions
from worker.ledger.models import control_state as control_state_table
from worker.ledger.models import job_events, jobs
from worker.ledger.records import Job


def empty_ledger() -> None:
    """No jobs, no events, and the broker's run_id already known (so reconcile sees no restart)."""
    with db.begin() as conn:
        conn.execute(sa.delete(job_events))
        conn.execute(sa.delete(jobs))
        conn.execute(sa.delete(control_state_table))
    control_state.put(control_state.BROKER_RUN_ID, inspect.run_id(), now=utcnow())


def queued_job(tenant: str, queue: str | None = None, **fields: Any) -> Job:
    """A queued job of `tenant` (on a queue of its own unless named); `fields` set any other."""
    new = a_new_job(tenant, queue=queue or f"q-{uuid.uuid4().hex[:6]}", **fields)
    with db.begin() as conn:
        return transitions.create_jobs(conn, [new], actor="test", now=new.created_at)[0]


def running_job(tenant: str, worker: str, pid: int, **fields: Any) -> Job:
    """A queued job claimed by `worker`:`pid` with a 3 s lease."""
    job = queued_job(tenant, **fields)
    with db.begin() as conn:
        claimed = transitions.claim(conn, job.id, job.delivery_id, worker=worker, pid=pid, now=utcnow(), lease_s=3)
    assert claimed is not None
    return claimed
