"""Accepting jobs: the one way in, for the API and the library alike.

`accept()` runs the same steps for every caller, in this order, and writes nothing until every
check has passed:

1. validate each request (worker/accept/validate.py): type, args, size, queue, the caller's
   queues (an API key may be limited to some; the library may use every declared queue);
   then no queue of theirs may be paused with admission "refuse" (worker/accept/paused.py:
   QueuePausedError -> 429, for every caller: the operator asked for no new work);
2. the tenant's quota and its share of each queue (worker/accept/quota.py), then room in each queue (admission,
   worker/accept/admission.py: a reservation below the watermark, else QueueFullError -> 429);
3. commit in one transaction (worker/accept/commit.py), through this process's group committer
   for single jobs when the caller asks for it (worker/accept/group_commit.py); idempotency keys
   are settled in that transaction;
4. publish what is new in one pipeline (the outbox: a refused publish is left to the reconcile
   loop) with the reservations removed in it, after the messages (a group commit's are released
   once it answers; a failure's at once), and log one line per accepted job.

A caller that must not be refused for load (an operator's script re-queueing work, a migration)
passes `admission=False`, which skips step 2 for it and nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from worker import logs
from worker.accept.admission import Reservation, admit_jobs
from worker.accept.commit import Accepted, commit, publish_new
from worker.accept.group_commit import get_committer
from worker.accept.paused import check_not_refused
from worker.accept.quota import check_tenant_quota
from worker.accept.validate import JobRequest, new_jobs
from worker.ledger.records import NewJob
from worker.settings import get_settings

log = logging.getLogger(__name__)

DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class Caller:
    """Who submits: the tenant the jobs belong to, the actor their events name, the queues it may
    use (None: every declared queue), and whether load control applies to it."""

    tenant: str = DEFAULT_TENANT
    actor: str = "library"
    allowed_queues: frozenset[str] | None = None
    admission: bool = True


def accept(requests: Sequence[JobRequest], caller: Caller, *, group: bool = False) -> list[Accepted]:
    """Validate, admit, commit and publish `requests`: all of them, or none (a batch is one
    transaction). `group`: a single job may be committed together with this process's other
    submissions (group commit); a 202 still means committed.

    Raises:
        UnknownJobTypeError, InvalidArgsError, PayloadTooLargeError, UnknownQueueError,
        ForbiddenError: a request is wrong (nothing written).
        QueuePausedError: a queue is paused and refuses new jobs (nothing written; retry later).
        TenantQuotaError, QueueFullError: refused for load (nothing written; retry later).
        IdempotencyConflictError: a key was used for a different job (nothing written).
        LedgerUnavailableError: the ledger cannot keep them now (nothing written).
        CommitUnconfirmedError: the ledger did not confirm the commit (its `outcome` says whether
            anything was written: "not_written", or "unknown" with the `job_ids` to look up).
    """
    if not requests:
        return []
    news = new_jobs(requests, tenant=caller.tenant, allowed_queues=caller.allowed_queues)
    check_not_refused(news)
    reservations: list[Reservation] = []
    if caller.admission:
        check_tenant_quota(caller.tenant, news)
        reservations = admit_jobs(news)
    try:
        done = _commit_and_publish(news, caller.actor, reservations, group=group)
    finally:
        for reservation in reservations:
            reservation.release()
    for accepted in done:
        if accepted.created:
            _log_accepted(accepted)
    return done


def _commit_and_publish(
    news: list[NewJob], actor: str, reservations: list[Reservation], *, group: bool
) -> list[Accepted]:
    """A group commit answers after its own pipeline; `accept` then releases the reservations.
    Alone, they are removed in the publish pipeline, after the messages."""
    if group and len(news) == 1 and get_settings().submit_group_commit:
        return [get_committer().submit(news[0], actor=actor)]
    done = publish_new(commit(news, [actor] * len(news)), reservations)
    return [a for a in done if isinstance(a, Accepted)]  # without `separate`, errors raise


def _log_accepted(accepted: Accepted) -> None:
    """One line per accepted job with its fields: `grep <job id>` over every process's log
    follows the job from here to its worker."""
    job = accepted.job
    log.info("accepted job %s (%s)", job.id, job.type, extra=logs.job_extra(job))


def enqueue_many(
    requests: Sequence[JobRequest], *, tenant: str = DEFAULT_TENANT, actor: str = "library", admission: bool = True
) -> list[Accepted]:
    """Accept all of `requests` in one transaction, then publish what is new in one go.

    The same checks as `POST /jobs/batch`, the caller's queues aside (the library may use every
    declared queue). `admission=False` skips the tenant quota and the queues' watermarks.
    """
    return accept(requests, Caller(tenant, actor, admission=admission))


def enqueue(
    type: str,
    args: Mapping[str, Any] | None = None,
    *,
    tenant: str = DEFAULT_TENANT,
    queue: str | None = None,
    priority: int = 0,
    timeout: float | None = None,
    max_attempts: int | None = None,
    idempotency_key: str | None = None,
    actor: str = "library",
    admission: bool = True,
) -> Accepted:
    """Accept one job: the row is committed before the message is sent. See `enqueue_many`."""
    req = JobRequest(type, args or {}, queue, priority, timeout, max_attempts, idempotency_key)
    return enqueue_many([req], tenant=tenant, actor=actor, admission=admission)[0]
