"""recover_stuck: running jobs whose lease expired and whose worker process is gone."""

from __future__ import annotations

import datetime as dt
import logging
import uuid

import sqlalchemy as sa

from worker import db, ledger, presence
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
    counts = {"requeued": 0, "dead": 0, "lease_late": 0}
    requeued: list[JobRow] = []
    taken: list[uuid.UUID] = []
    with db.begin() as conn:
        rows = expired_leases(conn, now, limit or s.control_batch_size)
        if not rows:
            return counts
        present = presence.alive([(r.worker, r.worker_pid) for r in rows])
        for row, is_present in zip(rows, present, strict=True):
            if is_present:
                counts["lease_late"] += 1
                continue
            after = ledger.give_back(
                conn,
                row,
                reason="worker_lost",
                actor=ACTOR,
                now=now,
                max_backoff_s=s.max_backoff_seconds,
                immediate=True,
                error={"type": "WorkerLost", "message": f"lease expired and {row.worker}:{row.worker_pid} is gone"},
            )
            if after is None:
                continue
            taken.append(row.delivery_id)
            if after.state == JobState.QUEUED:
                requeued.append(after)
                counts["requeued"] += 1
            else:
                counts["dead"] += 1
    # A process that lost its presence but still runs (a stalled heartbeat) must not finish
    # a second execution: kill the old delivery wherever it is.
    revoke(taken)
    publish(requeued)
    return counts
