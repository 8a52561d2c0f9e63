"""Running one delivery of a job: claim, run under a heartbeat, record the outcome.

The Celery task body is thin: the message carries only (job_id, delivery_id); the arguments come
from the ledger row the claim returns, so the ledger, not the broker, decides what runs.
"""

from __future__ import annotations

import logging
import os
import socket
import traceback
import uuid
from typing import TYPE_CHECKING, Any

from billiard.exceptions import SoftTimeLimitExceeded
from celery import Task
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from worker.broker import wakeups
from worker.broker.celery_app import app
from worker.broker.publish import commit_then_publish
from worker.clock import utcnow
from worker.errors import LedgerUnavailableError
from worker.ledger import db, dispatch, queries, release, transitions
from worker.ledger.db import with_ledger_retry
from worker.ledger.records import Job
from worker.ledger.states import JobState
from worker.runtime import current, fencing, storable
from worker.runtime.heartbeat import get_heartbeat
from worker.runtime.job_metrics import job_finished
from worker.runtime.lost_child import MedicRequest
from worker.runtime.outcome import Outcome, OutcomeKind
from worker.settings import get_settings

if TYPE_CHECKING:
    from worker.runtime.registry import JobSpec

log = logging.getLogger(__name__)


class JobTask(Task):  # type: ignore[misc]
    """Base of every job task; its Request reports lost and timed-out children to the ledger."""

    Request = MedicRequest
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True


def register_task(spec: JobSpec) -> None:
    def run(task: Task, job_id: str, delivery_id: str) -> None:
        execute(spec, task, uuid.UUID(job_id), uuid.UUID(delivery_id))

    run.__name__ = spec.name.replace(".", "_")
    run.__qualname__ = run.__name__
    app.task(name=spec.name, bind=True, base=JobTask)(run)


def _printable(text: str) -> str:
    """`text` as the ledger can store it: NUL and lone surrogates escaped (an exception message
    may quote the very value the ledger refused)."""
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def error_info(exc: BaseException) -> dict[str, Any]:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {"type": type(exc).__qualname__, "message": _printable(str(exc)[:2000]), "traceback": _printable(tb[-8000:])}


def execute(spec: JobSpec, task: Task, job_id: uuid.UUID, delivery_id: uuid.UUID) -> None:
    s = get_settings()
    worker = task.request.hostname or socket.gethostname()
    pid = os.getpid()

    sent_at = 0.0

    rate = spec.flow.rate_interval_s if spec.flow is not None else None
    bucket: tuple[str, str] | None = None  # (queue, rate key) whose next job may be sent now

    def do_claim() -> Job | None:
        # One statement, committed asynchronously: a claim lost in a PostgreSQL crash only makes
        # the job look queued again, the at-least-once case (docs/guarantees.md, "Durability"):
        # the next lease extension then says "not extended" and the fence stops this execution.
        nonlocal sent_at
        sent_at = fencing.clock()  # before the statement: the lease it sets ends no earlier
        if rate is not None:  # the token and the claim in one transaction
            nonlocal bucket
            with db.begin() as conn:
                claimed, bucket = _claim_with_token(conn, job_id, delivery_id, worker, pid, s.lease_seconds)
            return claimed
        return db.write(
            lambda conn: transitions.claim(
                conn, job_id, delivery_id, worker=worker, pid=pid, now=utcnow(), lease_s=s.lease_seconds
            ),
            sync_commit=False,
        )

    parked: Job | None = None
    try:
        job = with_ledger_retry(do_claim, budget_s=s.heartbeat_seconds, what="claim")
        if job is None:  # stale, a duplicate, or its queue paused (parked `held` then)
            parked = with_ledger_retry(
                lambda: _park_if_paused(job_id, delivery_id, worker, pid), budget_s=s.heartbeat_seconds, what="park"
            )
    except LedgerUnavailableError:
        # Same task id, so the same delivery_id: the claim still works once the ledger is back.
        raise task.retry(countdown=s.heartbeat_seconds, max_retries=None) from None
    if bucket is not None:  # the bucket's token was taken (or is due later): its next jobs may be sent
        wakeups.defer({bucket[0]: dispatch.Wake(rate_keys={bucket[1]})})
    if job is None:
        if parked is not None:
            log.info("delivery %s of job %s parked held (%s)", delivery_id, job_id, parked.state)
        else:
            log.info("dropping stale or duplicate delivery %s of job %s", delivery_id, job_id)
        return

    fence = fencing.get_fence()
    holding = fence.hold(
        fencing.FencingToken(job_id, delivery_id, job.attempts), sent_at=sent_at, lease_s=s.lease_seconds
    )
    heartbeat = get_heartbeat(worker)
    heartbeat.track(job_id, delivery_id, job.queue)
    try:
        with fencing.running(holding), current.running(job_id, delivery_id):
            outcome = _run(spec, job)
            # the last report, if the heartbeat has not written it: GET /jobs/{id} ends on it
            heartbeat.write_progress({job_id: delivery_id})
        fence.body_done(job_id)
        after = record_outcome(job, outcome, actor=f"{worker}:{pid}")
        job_finished(job, outcome.kind, after)  # metrics; never raises
    finally:
        heartbeat.untrack(job_id)
        fence.release(job_id)
    if after is None:
        log.warning("job %s delivery %s was taken away while it ran; result discarded", job_id, delivery_id)


def _claim_with_token(
    conn: Connection, job_id: uuid.UUID, delivery_id: uuid.UUID, worker: str, pid: int, lease_s: float
) -> tuple[Job | None, tuple[str, str] | None]:
    """Claim a job of a rate-limited type: first its bucket's token (GCRA on a locked row: two
    starts of one bucket are at least its interval apart, on any host), then the claim. No token
    due: the job is parked `held` until it is (delayed, not failed), and the dispatcher sends it
    then. A token taken for a claim that then loses its race is spent: fewer starts, never more.
    Returns the claimed job and the (queue, rate key) whose next job the dispatcher may send."""
    now = utcnow()
    actor = f"{worker}:{pid}"
    job = queries.get_job(conn, job_id)
    if job is None or job.state != JobState.QUEUED or job.delivery_id != delivery_id or not job.rate_key:
        return transitions.claim(conn, job_id, delivery_id, worker=worker, pid=pid, now=now, lease_s=lease_s), None
    bucket = (job.queue, job.rate_key)
    due = dispatch.take_token(conn, job.rate_key, job.rate_interval_s or 0.0)  # its clock read under the lock
    now = utcnow()
    if due is not None:
        log.info("job %s over its rate: parked held until %s", job_id, due.isoformat())
        dispatch.park(conn, job_id, delivery_id, reason="rate_limited", actor=actor, now=now, not_before=due,
                      detail=f"{job.rate_key}: next start at {due.isoformat()}")  # fmt: skip
        return None, bucket
    return transitions.claim(conn, job_id, delivery_id, worker=worker, pid=pid, now=now, lease_s=lease_s), bucket


def _park_if_paused(job_id: uuid.UUID, delivery_id: uuid.UUID, worker: str, pid: int) -> Job | None:
    """A claim that matched nothing: if the delivery is current and its queue paused, the job
    goes back to `held` (the message is acked; the resume dispatches it). None: stale."""
    with db.begin() as conn:
        now = utcnow()
        job = queries.get_job(conn, job_id)
        if job is None or job.state != JobState.QUEUED or job.delivery_id != delivery_id:
            return None
        if not dispatch.control_of(conn, job.queue).paused:
            return None
        return dispatch.park(conn, job_id, delivery_id, reason="paused", actor=f"{worker}:{pid}", now=now,
                             detail=f"queue {job.queue!r} is paused")  # fmt: skip


NOT_STORABLE = "result_not_storable"
TOO_LARGE = "result_too_large"


def not_storable(detail: str) -> dict[str, Any]:
    """The error of a job whose result the ledger cannot keep; it fails (and retries) like any."""
    return {"type": NOT_STORABLE, "message": f"the job's result cannot be stored: {detail}"[:2000], "traceback": ""}


def too_large(size: int, limit: int) -> dict[str, Any]:
    """The error of a job whose result is over MEDIC_MAX_RESULT_BYTES. Not retryable: the same
    function on the same args returns a result of the same size, so the job is dead at once."""
    message = f"the job's result is {size} bytes; the limit is {limit} (MEDIC_MAX_RESULT_BYTES)"
    return {"type": TOO_LARGE, "message": message, "traceback": "", "size": size, "limit": limit}


def record_outcome(job: Job, outcome: Outcome, *, actor: str) -> Job | None:
    """Finalize `job` with `outcome`, retrying while the ledger is down.

    A DataError is no outage: the ledger refused the value, and retrying would leave the row
    `running` until its timeout. It becomes the job's error (`result_not_storable`) at once.
    """
    s = get_settings()

    def write(o: Outcome) -> Job | None:
        if o.kind is OutcomeKind.SUCCEEDED and job.workflow_id is None:
            # one statement, synchronous: nothing to publish after it
            done = with_ledger_retry(
                lambda: db.write(lambda conn: _finalize(conn, job, o, actor=actor)),
                budget_s=s.finalize_retry_seconds,
                what="finalize",
            )
            if job.dispatch:  # its slot is free: the next held job, from this process's wakeup thread
                wakeups.defer(dispatch.slots_freed([done]))
            return done
        written = with_ledger_retry(
            lambda: commit_then_publish(lambda conn: _finalize_and_follow(conn, job, o, actor=actor), follow=False),
            budget_s=s.finalize_retry_seconds,
            what="finalize",
        )
        wakeups.defer(dispatch.slots_freed(written))
        return written[0]

    try:
        return write(outcome)
    except sa_exc.DataError as exc:
        log.error("job %s: the ledger refused its outcome: %s", job.id, exc.orig)
        return write(Outcome.failed(not_storable(_printable(str(exc.orig)))))


TYPE_MISMATCH = "delivery_type_mismatch"


def _run(spec: JobSpec, job: Job) -> Outcome:
    if job.type != spec.name:
        # The message names the function, the row names the job: anyone who can write to the
        # broker could otherwise run function X on job Y's args. The delivery fails; its retry
        # is published by medic, naming the row's type.
        log.error("job %s is %s but its delivery %s named %s; not run", job.id, job.type, job.delivery_id, spec.name)
        return Outcome.failed(
            {"type": TYPE_MISMATCH, "message": f"delivered as {spec.name!r}; the job is {job.type!r}", "traceback": ""}
        )
    try:
        result = spec.func(**spec.load(job.args))
        found = storable.check(result)  # refuse here what JSONB would refuse at finalize
        if found is not None:
            loc, reason = found
            return Outcome.failed(not_storable(f"{loc}: {reason}"))
        limit = get_settings().max_result_bytes
        if (size := storable.encoded_size(result)) > limit:  # nothing oversized reaches the ledger
            return Outcome.failed(too_large(size, limit), retryable=False)
        return Outcome.succeeded(result)
    except SoftTimeLimitExceeded:
        return Outcome.timed_out(f"soft time limit of {job.timeout_s}s exceeded")
    except Exception as exc:  # noqa: BLE001 - every job error is recorded, none kills the worker
        return Outcome.failed(error_info(exc))


def _finalize_and_follow(conn: Connection, job: Job, outcome: Outcome, *, actor: str) -> list[Job | None]:
    """The outcome, then (a workflow's step that ended) its dependents released or cancelled in
    the SAME transaction: a crash after the COMMIT cannot lose a release, and one before it
    leaves the step running, to be run again and release then. The released steps are published
    after the COMMIT with any retry of this one (the outbox)."""
    after = _finalize(conn, job, outcome, actor=actor)
    if after is None or job.workflow_id is None:
        return [after]
    return [after, *release.step_ended(conn, after, actor=actor, now=after.updated_at)]


def _finalize(conn: Connection, job: Job, outcome: Outcome, *, actor: str) -> Job | None:
    s = get_settings()
    now = utcnow()
    if outcome.kind is OutcomeKind.SUCCEEDED:
        done = transitions.succeed(conn, job.id, job.delivery_id, outcome.value, actor=actor, now=now)
        if done is None:  # its cancel was requested: the run ends `cancelled`, its result kept
            done = transitions.stop(
                conn, job, actor=actor, now=now, detail="returned after the cancel request", result=outcome.value
            )
        return done
    if outcome.kind is OutcomeKind.TIMEOUT:
        return transitions.time_out(
            conn, job, actor=actor, now=now, max_backoff_s=s.max_backoff_seconds, detail=outcome.value
        )
    return transitions.give_back(
        conn,
        job,
        reason="error",
        actor=actor,
        now=now,
        max_backoff_s=s.max_backoff_seconds,
        error=outcome.value,
        retryable=outcome.retryable,
    )
