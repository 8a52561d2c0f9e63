"""enforce_timeouts: running jobs past start + timeout + grace, whatever their worker says."""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy.engine import Connection

from worker import logs
from worker.broker.publish import commit_then_publish, revoke_deliveries
from worker.control.loop import sort_outcomes
from worker.ledger import db, queries, release, transitions
from worker.ledger.records import Job
from worker.settings import get_settings

log = logging.getLogger(__name__)
ACTOR = "control:enforce_timeouts"


def enforce_timeouts(now: dt.datetime, *, limit: int | None = None) -> dict[str, int]:
    """Kill overdue deliveries (SIGKILL via revoke) and move their jobs through timed_out.

    Celery's own hard time limit (timeout + grace) normally acts first and the worker reports it;
    this loop waits one more grace period and catches what that missed (a pool without time
    limits, a report that never reached the ledger).
    """
    s = get_settings()
    with db.connect() as conn:
        late = queries.overdue(conn, now, 2 * s.timeout_grace_seconds, limit or s.control_batch_size)
    if not late:
        return {"requeued": 0, "dead": 0, "stopped": 0}
    revoke_deliveries([r.delivery_id for r in late])

    def time_out_all(conn: Connection) -> list[Job | None]:
        timed_out = [
            transitions.time_out(
                conn, row, actor=ACTOR, now=now, max_backoff_s=s.max_backoff_seconds,
                detail=f"running for more than {row.timeout_s:.0f}s + grace; killed by {ACTOR}",
            )
            for row in late
        ]  # fmt: skip
        # a workflow step that ended dead (or stopped): its dependents followed up in this transaction
        return [*timed_out, *release.follow(conn, timed_out, actor=ACTOR, now=now)]

    after = commit_then_publish(time_out_all)[: len(late)]
    for row, given in zip(late, after, strict=True):
        if given is not None:
            # `late` rows carry ids and times only; the row after names queue and tenant. The
            # delivery is the killed one: the one the worker's lines about this run carried.
            extra = logs.job_extra(given, delivery_id=row.delivery_id, reason="timed_out")
            log.warning("enforce_timeouts: job %s ran more than %.0fs + grace; killed, now %s",
                        row.id, row.timeout_s, given.state, extra=extra)  # fmt: skip
    return sort_outcomes(after)
