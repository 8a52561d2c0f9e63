"""recover_stuck: running jobs whose lease expired and whose worker process is gone, or is
there but no longer holds (or never held) that delivery."""

from __future__ import annotations

import datetime as dt
import logging
import uuid

from sqlalchemy.engine import Connection

from worker import logs
from worker.broker import presence
from worker.broker.publish import commit_then_publish, revoke_deliveries
from worker.control.loop import sort_outcomes
from worker.ledger import queries, release, transitions
from worker.ledger.records import Job
from worker.settings import get_settings

log = logging.getLogger(__name__)
ACTOR = "control:recover_stuck"


def recover_stuck(now: dt.datetime, *, limit: int | None = None) -> dict[str, int]:
    """Requeue (or declare dead) every expired job whose worker no longer holds its delivery.

    A job whose lease expired while its worker's live incarnation still holds its delivery is left
    alone and counted as `lease_late`: the worker may be stalled on the ledger, and taking the job
    away would start a second execution. Taken are jobs whose process is gone, and jobs whose
    process is present but does not hold the delivery: finalize gave up after its retry budget,
    the claim committed but its reply was lost (the process never started it), or the process is a
    new incarnation with the same (hostname, pid), e.g. a restarted container.

    Fencing: a job is taken only when its lease expired more than MEDIC_LEASE_MARGIN_SECONDS ago.
    Its worker stops the job once the lease it can prove it holds has passed (worker/runtime/
    fencing.py), so by then the old execution is dead; the margin covers clock skew and the fence's
    reaction time. The old delivery is revoked BEFORE the retry is published, a second belt.

    Race: a job claimed just now is not in its process's presence until the next beat. That cannot
    make us take it: we only look at EXPIRED leases, the lease (4 s; 3 s fast) is longer than the
    heartbeat interval (1 s; 0.5 s fast), and the presence key lives only `presence_ttl_seconds`
    (2.5 s; 1.5 s fast) < the lease. So a presence key that exists once the lease has expired was
    written at least `lease - presence_ttl` after the lease was last set (by the claim or by a
    beat that held the job): by a beat that saw the job tracked, unless the process dropped it.
    """
    s = get_settings()
    late = 0
    taken: list[uuid.UUID] = []
    acted: list[tuple[Job, Job]] = []

    def give_back_orphans(conn: Connection) -> list[Job | None]:
        nonlocal late
        late = 0
        taken.clear()
        acted.clear()
        cutoff = now - dt.timedelta(seconds=s.lease_margin_seconds)
        rows = queries.expired_leases(conn, cutoff, limit or s.control_batch_size)
        held = presence.holding([(r.worker, r.worker_pid, r.delivery_id) for r in rows]) if rows else []
        after: list[Job | None] = []
        for row, is_held in zip(rows, held, strict=True):
            if is_held:
                late += 1
                continue
            where = f"{row.worker}:{row.worker_pid}"
            error = {"type": "WorkerLost", "message": f"lease expired and {where} is gone or no longer holds it"}
            given = transitions.give_back(
                conn, row, reason="worker_lost", actor=ACTOR, now=now, max_backoff_s=s.max_backoff_seconds,
                immediate=True, error=error,
            )  # fmt: skip
            if given is not None:
                taken.append(row.delivery_id)
                acted.append((row, given))
                after.append(given)
        # a workflow step given up on (dead, or stopped after a cancel request): its dependents
        # released or cancelled in this transaction, published with the retries
        return [*after, *release.follow(conn, after, actor=ACTOR, now=now)]

    # The old deliveries are revoked before the retries are published: a stale process that
    # somehow outlived its fence hears the revoke before a retry exists.
    commit_then_publish(give_back_orphans, before_publish=lambda: revoke_deliveries(taken))
    for row, given in acted:  # after the commit: a line per job actually taken
        where = f"{row.worker}:{row.worker_pid}"
        extra = logs.job_extra(row, reason="worker_lost")
        log.warning("recover_stuck: job %s taken from %s (lease expired): %s", row.id, where, given.state, extra=extra)
    # the outcomes of the jobs taken, not of their workflows' dependents
    return {**sort_outcomes(given for _, given in acted), "lease_late": late}
