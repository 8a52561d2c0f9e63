"""Bulk actions over every job a filter matches: cancel, and retry of dead jobs.

One place for both doors: `POST /jobs/cancel` and `POST /jobs/retry` of the API, and the
console's "Cancel all matching" and "Retry all matching" buttons. Each request acts on at most
`limit` jobs, oldest first, in one transaction: every job gets its own audited transition (a job
event naming the actor), and the action log (worker/ledger/actions.py) gets one row with the
filter and the counts, committed with them. `more` tells the caller to ask again.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from sqlalchemy.engine import Connection

from worker.broker.publish import announce_cancel, publish_and_follow
from worker.clock import utcnow
from worker.ledger import actions, db, queries, release, transitions
from worker.ledger.queries import JobFilter
from worker.ledger.records import Job
from worker.ledger.states import JobState

log = logging.getLogger(__name__)

CANCEL_MATCHING = "cancel_matching"
RETRY_MATCHING = "retry_matching"


@dataclass(frozen=True)
class BulkOutcome:
    matched: int  # jobs this request took up (at most `limit`)
    changed: int  # of those, cancelled or requeued now
    requested: int  # of those, running jobs asked to stop (a cancel only)
    job_ids: list[uuid.UUID]
    more: bool  # others match beyond `limit`: ask again
    limit: int


def cancel_matching(match: JobFilter, *, actor: str, limit: int, state: str | None = None) -> BulkOutcome:
    """Cancel the jobs `match` covers (waiting, held, queued: at once; running: asked to stop
    within a heartbeat), `state` narrowing to one of those states."""
    states = [state] if state else list(queries.CANCELLABLE)
    asked: list[Job] = []
    done_rows: list[Job] = []
    followed: list[Job] = []
    with db.begin() as conn:
        ids = queries.matching_ids(conn, match, states=states, limit=limit + 1)
        now = utcnow()
        for job_id in ids[:limit]:
            done, changed = release.cancel(conn, job_id, match.tenant, actor=actor, now=now)
            followed += changed
            if done is None:  # it finished meanwhile (or a workflow's follow-up cancelled it)
                continue
            (asked if done[0] == JobState.RUNNING else done_rows).append(done[1])
        outcome = BulkOutcome(
            matched=len(ids[:limit]), changed=len(done_rows), requested=len(asked),
            job_ids=[*(r.id for r in done_rows), *(r.id for r in asked)], more=len(ids) > limit, limit=limit,
        )  # fmt: skip
        _log(conn, CANCEL_MATCHING, match, actor, outcome, state=state)
    publish_and_follow(followed + done_rows)
    announce_cancel([r.delivery_id for r in asked])  # the fast path; the ledger holds the request
    return outcome


def retry_matching(match: JobFilter, *, actor: str, limit: int) -> BulkOutcome:
    """Run again, with a fresh set of attempts, the dead jobs `match` covers."""
    with db.begin() as conn:
        ids = queries.matching_ids(conn, match, states=queries.RETRYABLE, limit=limit + 1)
        now = utcnow()
        rows = [transitions.retry_dead(conn, job_id, match.tenant, actor=actor, now=now) for job_id in ids[:limit]]
        retried = [r for r in rows if r is not None]
        outcome = BulkOutcome(
            matched=len(ids[:limit]), changed=len(retried), requested=0,
            job_ids=[r.id for r in retried], more=len(ids) > limit, limit=limit,
        )  # fmt: skip
        _log(conn, RETRY_MATCHING, match, actor, outcome)
    publish_and_follow(retried)  # the outbox: a publish lost here is re-sent by reconcile
    return outcome


def _log(
    conn: Connection, action: str, match: JobFilter, actor: str, outcome: BulkOutcome, **extra: str | None
) -> None:
    target = {k: v for k, v in match.given().items() if k != "tenant"}
    target.update({k: v for k, v in extra.items() if v is not None})
    actions.record(
        conn,
        actor=actor, tenant=match.tenant, action=action, target=target, matched=outcome.matched,
        changed=outcome.changed + outcome.requested, more=outcome.more, now=utcnow(),
        detail={"job_ids": [str(i) for i in outcome.job_ids[:100]], "requested": outcome.requested},
    )  # fmt: skip
    log.info(
        "%s by %s on %s %s: %d matched, %d changed, %d asked to stop, more=%s",
        action,
        actor,
        match.tenant,
        target,
        outcome.matched,
        outcome.changed,
        outcome.requested,
        outcome.more,
    )
