"""recover_stuck: running jobs whose lease expired and whose worker process is gone."""

from __future__ import annotations

import datetime as dt
import logging
import uuid

import sqlalchemy as sa

from worker import db, ledger, presence
from worker.control.loop import sort_outcomes
from worker.ledger import JobRow
from worker.models import jobs
from worker.publish import publish, revoke
from worker.settings import get_settings
from worker.states import JobState

log = logging.getLogger(__name__)
ACTOR = "control:recover_stuck"


def expired_leases(conn: sa.Connection, now: dt.datetime, limit: int) -> list[JobRow]:
    """Running jobs past their lease, oldest first; rows another recoverer holds are skipped."""
    stmt = (
        sa.select(jobs)
        .where(jobs.c.state == JobState.RUNNING.value, jobs.c.lease_expires_at < now)
        .order_by(jobs.c.lease_expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(conn.execute(stmt))


def recover_stuck(now: dt.datetime, *, limit: int | None = None) -> dict[str, int]:
    """Requeue (or declare dead) every expired job whose worker is gone.

    A job whose lease expired while its worker is still present is left alone and counted as
    `lease_late`: the worker may be stalled on the ledger, and taking the job away would start a
    second execution.
    """
    s = get_settings()
    late = 0
    after: list[JobRow | None] = []
    taken: list[uuid.UUID] = []
    with db.begin() as conn:
        rows = expired_leases(conn, now, limit or s.control_batch_size)
        present = presence.alive([(r.worker, r.worker_pid) for r in rows]) if rows else []
        for row, is_present in zip(rows, present, strict=True):
            if is_present:
                late += 1
                continue
            error = {"type": "WorkerLost", "message": f"lease expired and {row.worker}:{row.worker_pid} is gone"}
            given = ledger.give_back(
                conn, row, reason="worker_lost", actor=ACTOR, now=now, max_backoff_s=s.max_backoff_seconds,
                immediate=True, error=error,
            )  # fmt: skip
            if given is not None:
                taken.append(row.delivery_id)
                after.append(given)
    # A process that lost its presence but still runs (a stalled heartbeat) must not finish
    # a second execution: kill the old delivery wherever it is.
    revoke(taken)
    requeued, counts = sort_outcomes(after)
    publish(requeued)
    return {**counts, "lease_late": late}
