"""enforce_timeouts: running jobs past start + timeout + grace, whatever their worker says."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from worker import db, ledger
from worker.clock import seconds
from worker.control.loop import sort_outcomes
from worker.ledger import JobRow
from worker.models import jobs
from worker.publish import publish, revoke
from worker.settings import get_settings
from worker.states import JobState

ACTOR = "control:enforce_timeouts"


def overdue(conn: sa.Connection, now: dt.datetime, grace_s: float, limit: int) -> list[JobRow]:
    """Running jobs past their deadline. The running set is bounded by the fleet's concurrency."""
    rows = conn.execute(sa.select(jobs).where(jobs.c.state == JobState.RUNNING.value).order_by(jobs.c.started_at)).all()
    late = [r for r in rows if r.started_at + seconds(r.timeout_s + grace_s) < now]
    return late[:limit]


def enforce_timeouts(now: dt.datetime, *, limit: int | None = None) -> dict[str, int]:
    """Kill overdue deliveries (SIGKILL via revoke) and move their jobs through timed_out.

    Celery's own hard time limit (timeout + grace) normally acts first and the worker reports it;
    this loop waits one more grace period and catches what that missed (a pool without time
    limits, a report that never reached the ledger).
    """
    s = get_settings()
    with db.connect() as conn:
        late = overdue(conn, now, 2 * s.timeout_grace_seconds, limit or s.control_batch_size)
    if not late:
        return {"requeued": 0, "dead": 0}
    revoke([r.delivery_id for r in late])
    with db.begin() as conn:
        after = [
            ledger.time_out(
                conn, row, actor=ACTOR, now=now, max_backoff_s=s.max_backoff_seconds,
                detail=f"running for more than {row.timeout_s:.0f}s + grace; killed by {ACTOR}",
            )
            for row in late
        ]  # fmt: skip
    requeued, counts = sort_outcomes(after)
    publish(requeued)
    return counts
