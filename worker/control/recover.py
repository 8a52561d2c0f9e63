"""recover_stuck: running jobs whose lease expired and whose worker process is gone."""

from __future__ import annotations

import datetime as dt
import logging
import uuid

from sqlalchemy.engine import Connection

from worker.broker import presence
from worker.broker.publish import commit_then_publish, revoke_deliveries
from worker.control.loop import sort_outcomes
from worker.ledger import queries, transitions
from worker.ledger.models import JobRow
from worker.settings import get_settings

log = logging.getLogger(__name__)
ACTOR = "control:recover_stuck"


def recover_stuck(now: dt.datetime, *, limit: int | None = None) -> dict[str, int]:
    """Requeue (or declare dead) every expired job whose worker is gone.

    A job whose lease expired while its worker is still present is left alone and counted as
    `lease_late`: the worker may be stalled on the ledger, and taking the job away would start a
    second execution.
    """
    s = get_settings()
    late = 0
    taken: list[uuid.UUID] = []

    def give_back_orphans(conn: Connection) -> list[JobRow | None]:
        nonlocal late
        rows = queries.expired_leases(conn, now, limit or s.control_batch_size)
        present = presence.alive([(r.worker, r.worker_pid) for r in rows]) if rows else []
        after: list[JobRow | None] = []
        for row, is_present in zip(rows, present, strict=True):
            if is_present:
                late += 1
                continue
            error = {"type": "WorkerLost", "message": f"lease expired and {row.worker}:{row.worker_pid} is gone"}
            given = transitions.give_back(
                conn, row, reason="worker_lost", actor=ACTOR, now=now, max_backoff_s=s.max_backoff_seconds,
                immediate=True, error=error,
            )  # fmt: skip
            if given is not None:
                taken.append(row.delivery_id)
                after.append(given)
        return after

    after = commit_then_publish(give_back_orphans)
    # A process that lost its presence but still runs (a stalled heartbeat) must not finish
    # a second execution: kill the old delivery wherever it is.
    revoke_deliveries(taken)
    return {**sort_outcomes(after), "lease_late": late}
