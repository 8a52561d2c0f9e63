"""Every write of a job: creation, each state change, lease extension, and deletion.

Every state change is `UPDATE jobs ... WHERE id = :id AND state = :expected [AND fence]` plus a
`job_events` row, in the caller's transaction. A change that matches no row returns None: the
caller lost a race (another delivery, a recovery, a cancel) and must not act on the job.

Each returns the job as the change left it (`Job`). How the row and its event are written is the
dialect's (worker/ledger/dialect.py): ONE statement on PostgreSQL, two on SQLite.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from worker.clock import seconds
from worker.errors import InvalidTransitionError
from worker.ledger import dialect, events, queries
from worker.ledger.events import Event
from worker.ledger.models import job_events, jobs
from worker.ledger.records import Job, NewJob, Overdue
from worker.ledger.states import JobState, is_allowed


def new_delivery_id() -> uuid.UUID:
    return uuid.uuid4()


def backoff_delay(backoff_s: float, attempts: int, cap_s: float) -> float:
    """Exponential back-off after the `attempts`-th failed attempt: b, 2b, 4b ... capped."""
    if backoff_s <= 0:
        return 0.0
    return float(min(cap_s, backoff_s * 2 ** max(0, attempts - 1)))


def create_jobs(conn: Connection, news: Sequence[NewJob], *, actor: str, now: dt.datetime) -> list[Job]:
    """Insert new `queued` jobs and their creation events (the only write of an initial state),
    in `news`' order. On PostgreSQL one statement, safe to re-run after a lost connection."""
    if not news:
        return []
    return dialect.of(conn).create_jobs(conn, news, actor=actor, now=now)


def create_job_once(conn: Connection, new: NewJob, *, actor: str, now: dt.datetime) -> Job | None:
    """Insert a job unless its (tenant, idempotency_key) exists; None if it did (race-free)."""
    ledger = dialect.of(conn)
    values = new.row()
    stmt = ledger.insert_on_conflict(jobs, values, ["tenant", "idempotency_key"]).returning(*jobs.c)
    inserted = Job.maybe(conn.execute(stmt).first())
    if inserted is not None:
        conn.execute(*events.created(actor, now).insert_for([inserted]))
    return inserted


def create_fire(
    conn: Connection, new: NewJob, schedule_id: uuid.UUID, scheduled_for: dt.datetime, *, actor: str, now: dt.datetime
) -> Job | None:
    """Insert a schedule's fire for `scheduled_for` unless that fire exists; None if it did.
    The unique (schedule_id, scheduled_for) makes racing loops and beats fire each time once."""
    values = dict(new.row(), schedule_id=schedule_id, scheduled_for=scheduled_for)
    stmt = dialect.of(conn).insert_on_conflict(jobs, values, ["schedule_id", "scheduled_for"]).returning(*jobs.c)
    inserted = Job.maybe(conn.execute(stmt).first())
    if inserted is not None:
        conn.execute(*events.created(actor, now).insert_for([inserted]))
    return inserted


def transition(
    conn: Connection,
    job_id: uuid.UUID,
    frm: JobState,
    to: JobState,
    *,
    actor: str,
    reason: str,
    now: dt.datetime,
    values: Mapping[str, Any] | None = None,
    where: Iterable[sa.ColumnElement[bool]] = (),
    detail: str | None = None,
) -> Job | None:
    """Move one job from `frm` to `to` if it is still in `frm` (and matches `where`).

    Raises:
        InvalidTransitionError: the state machine does not allow `frm -> to`.
    """
    _check(frm, to)
    update = dialect.job_update(job_id, frm.value, to.value, at=now, values=dict(values or {}), where=list(where))
    event = Event(to.value, reason, actor=actor, at=now, frm=frm.value, detail=detail)
    return dialect.of(conn).change(conn, update, event)


def _check(frm: JobState, to: JobState) -> None:
    if not is_allowed(frm, to):
        raise InvalidTransitionError(f"{frm} -> {to} is not a transition", frm=frm, to=to)


def _fenced(
    conn: Connection,
    job_id: uuid.UUID,
    delivery_id: uuid.UUID,
    frm: JobState,
    to: JobState,
    *,
    actor: str,
    reason: str,
    now: dt.datetime,
    values: dict[str, Any],
    unless_paused: bool = False,
) -> Job | None:
    """A hot transition fenced on the delivery (a cached, prepared statement on PostgreSQL).
    `values` may map a column to dialect.INCREMENT."""
    _check(frm, to)
    event = Event(to.value, reason, actor=actor, at=now, frm=frm.value)
    return dialect.of(conn).fenced(conn, job_id, delivery_id, event, values, unless_paused=unless_paused)


def claim(
    conn: Connection,
    job_id: uuid.UUID,
    delivery_id: uuid.UUID,
    *,
    worker: str,
    pid: int,
    now: dt.datetime,
    lease_s: float,
) -> Job | None:
    """Start a delivery: only the message carrying the current delivery_id can claim a queued job,
    and only while its queue is not paused (worker/ledger/dispatch.py `park` then holds it)."""
    return _fenced(
        conn,
        job_id,
        delivery_id,
        JobState.QUEUED,
        JobState.RUNNING,
        actor=f"{worker}:{pid}",
        reason="claimed",
        now=now,
        values={
            "attempts": dialect.INCREMENT,
            "started_at": now,
            "heartbeat_at": now,
            "lease_expires_at": now + seconds(lease_s),
            "finished_at": None,
            "worker": worker,
            "worker_pid": pid,
            "progress": None,  # an earlier attempt's report is not this one's
        },
        unless_paused=True,
    )


def succeed(
    conn: Connection, job_id: uuid.UUID, delivery_id: uuid.UUID, result: Any, *, actor: str, now: dt.datetime
) -> Job | None:
    return _fenced(
        conn,
        job_id,
        delivery_id,
        JobState.RUNNING,
        JobState.SUCCEEDED,
        actor=actor,
        reason="succeeded",
        now=now,
        values={"result": result, "finished_at": now, "lease_expires_at": None},
    )


def give_back(
    conn: Connection,
    job: Job,
    *,
    reason: str,
    actor: str,
    now: dt.datetime,
    max_backoff_s: float,
    error: Mapping[str, Any] | None = None,
    frm: JobState = JobState.RUNNING,
    immediate: bool = False,
    retryable: bool = True,
    attempt_spent: bool = True,
) -> Job | None:
    """End a failed delivery of `job`: `queued` with back-off if attempts are left, else `dead`
    (at once when the failure is not `retryable`: another attempt would end the same way).
    A delivery ended through no fault of the job (`attempt_spent=False`: its worker shut down)
    is always queued again, with one more attempt allowed: `attempts` still counts every claim,
    so the attempt of a fencing token only grows, and the job keeps the attempts it had left.

    The one place that decides "retry or give up". Fenced on the delivery and attempt that
    `job` describes, so a late report of an old delivery changes nothing. A running job whose
    cancel was requested is neither: it ends `cancelled`, reason `stopped` (`stop`).
    """
    fence = [jobs.c.delivery_id == job.delivery_id, jobs.c.attempts == job.attempts]
    if frm is JobState.RUNNING:  # a job whose cancel was requested is never retried ...
        fence.append(jobs.c.cancel_requested_at.is_(None))
    given = _give_back(conn, job, fence, reason=reason, actor=actor, now=now, max_backoff_s=max_backoff_s,
                       error=error, frm=frm, immediate=immediate, retryable=retryable,
                       attempt_spent=attempt_spent)  # fmt: skip
    if given is None and frm is JobState.RUNNING:  # ... it ends `cancelled` (stopped)
        return stop(conn, job, actor=actor, now=now, detail=f"ended ({reason}) after the cancel request", error=error)
    return given


def _give_back(
    conn: Connection,
    job: Job,
    fence: list[sa.ColumnElement[bool]],
    *,
    reason: str,
    actor: str,
    now: dt.datetime,
    max_backoff_s: float,
    error: Mapping[str, Any] | None,
    frm: JobState,
    immediate: bool,
    retryable: bool,
    attempt_spent: bool,
) -> Job | None:
    common: dict[str, Any] = {"lease_expires_at": None}
    if error is not None:
        common["error"] = dict(error)
    if not attempt_spent:
        common["max_attempts"] = job.max_attempts + 1
    if not attempt_spent or (retryable and job.attempts < job.max_attempts):
        delay = 0.0 if immediate else backoff_delay(job.backoff_s, job.attempts, max_backoff_s)
        return transition(
            conn,
            job.id,
            frm,
            requeued_state(job),
            actor=actor,
            reason=reason,
            now=now,
            where=fence,
            values={
                **common,
                "delivery_id": new_delivery_id(),
                "not_before": now + seconds(delay) if delay else None,
                "published_at": None if job.dispatch else now,
            },
            detail=f"retry in {delay:.1f}s",
        )
    return transition(
        conn,
        job.id,
        frm,
        JobState.DEAD,
        actor=actor,
        reason=reason,
        now=now,
        where=fence,
        values={**common, "finished_at": now},
        detail=f"gave up after {job.attempts} attempt(s)" if retryable else "not retryable",
    )


def requeued_state(job: Job) -> JobState:
    """Where a job goes to run again: `held` for one the dispatcher starts (its slot is freed and
    the dispatcher sends it when it may), else `queued` (published at once)."""
    return JobState.HELD if job.dispatch else JobState.QUEUED


def time_out(
    conn: Connection, job: Job | Overdue, *, actor: str, now: dt.datetime, max_backoff_s: float, detail: str
) -> Job | None:
    """running -> timed_out -> queued | dead, in the caller's transaction; a job whose cancel was
    requested ends `cancelled` (stopped) instead."""
    error = {"type": "Timeout", "message": detail, "traceback": None}
    timed = transition(
        conn,
        job.id,
        JobState.RUNNING,
        JobState.TIMED_OUT,
        actor=actor,
        reason="timeout",
        now=now,
        where=[jobs.c.delivery_id == job.delivery_id, jobs.c.cancel_requested_at.is_(None)],
        values={"error": error},
        detail=detail,
    )
    if timed is None:
        stopped = f"timed out after the cancel request: {detail}"
        return stop(conn, job, actor=actor, now=now, detail=stopped, error=error)
    return give_back(
        conn, timed, reason="timeout", actor=actor, now=now, max_backoff_s=max_backoff_s, frm=JobState.TIMED_OUT
    )


def cancel(
    conn: Connection, job_id: uuid.UUID, tenant: str, *, actor: str, now: dt.datetime
) -> tuple[JobState, Job] | None:
    """Cancel a job of `tenant`: a queued or held one, or a workflow's step still waiting, at once
    (`cancelled`); a running one is asked to stop (`cancel_requested_at` set, an event running ->
    running `cancel_requested`): its worker learns it at its next heartbeat and stops it within
    the grace. Returns the state it was in and the row; a second request of a running job returns
    the row unchanged (no second event). None: no such job of `tenant`, or it is not waiting,
    held, queued or running."""
    for frm in (JobState.QUEUED, JobState.HELD, JobState.WAITING):
        row = transition(
            conn, job_id, frm, JobState.CANCELLED, actor=actor, reason="cancelled", now=now,
            where=[jobs.c.tenant == tenant], values={"finished_at": now, "lease_expires_at": None},
        )  # fmt: skip
        if row is not None:
            return frm, row
    row = transition(
        conn, job_id, JobState.RUNNING, JobState.RUNNING, actor=actor, reason="cancel_requested", now=now,
        where=[jobs.c.tenant == tenant, jobs.c.cancel_requested_at.is_(None)], values={"cancel_requested_at": now},
    )  # fmt: skip
    if row is not None:
        return JobState.RUNNING, row
    again = queries.get_job(conn, job_id, tenant)
    if again is not None and again.state == JobState.RUNNING and again.cancel_requested_at is not None:
        return JobState.RUNNING, again
    return None


def stop(
    conn: Connection,
    job: Job | Overdue,
    *,
    actor: str,
    now: dt.datetime,
    detail: str,
    result: Any = None,
    error: Mapping[str, Any] | None = None,
) -> Job | None:
    """running -> cancelled, reason `stopped`: the run of a job whose cancel was requested ended
    (it returned, raised, or was killed after the grace). Fenced on the delivery, and only for a
    job with a request: the one way such a job leaves `running`. A result it returned is kept."""
    values: dict[str, Any] = {"finished_at": now, "lease_expires_at": None, "result": result}
    if error is not None:
        values["error"] = dict(error)
    return transition(
        conn, job.id, JobState.RUNNING, JobState.CANCELLED, actor=actor, reason="stopped", now=now,
        where=[jobs.c.delivery_id == job.delivery_id, jobs.c.cancel_requested_at.is_not(None)],
        values=values, detail=detail,
    )  # fmt: skip


def retry_dead(conn: Connection, job_id: uuid.UUID, tenant: str, *, actor: str, now: dt.datetime) -> Job | None:
    """Manual retry of a dead job: a fresh set of attempts and a fresh delivery (`held` for a job
    the dispatcher starts: it is published when it may start)."""
    dead = queries.get_job(conn, job_id, tenant)
    if dead is None or dead.state != JobState.DEAD.value:
        return None
    to = requeued_state(dead)
    return transition(
        conn,
        job_id,
        JobState.DEAD,
        to,
        actor=actor,
        reason="manual_retry",
        now=now,
        where=[jobs.c.tenant == tenant],
        values={
            "attempts": 0,
            "delivery_id": new_delivery_id(),
            "not_before": None,
            "finished_at": None,
            "published_at": None if to is JobState.HELD else now,
        },
    )


def republish(conn: Connection, job: Job, *, actor: str, reason: str, now: dt.datetime) -> Job | None:
    """queued -> queued with a fresh delivery_id: any older message of this job is now stale."""
    return transition(
        conn,
        job.id,
        JobState.QUEUED,
        JobState.QUEUED,
        actor=actor,
        reason=reason,
        now=now,
        where=[jobs.c.delivery_id == job.delivery_id],
        values={"delivery_id": new_delivery_id(), "published_at": now},
    )


def give_up_undeliverable(conn: Connection, job: Job, *, actor: str, now: dt.datetime, detail: str) -> Job | None:
    """queued -> dead: its message keeps vanishing (e.g. no worker has its job type registered)."""
    return transition(
        conn,
        job.id,
        JobState.QUEUED,
        JobState.DEAD,
        actor=actor,
        reason="undeliverable",
        now=now,
        where=[jobs.c.delivery_id == job.delivery_id],
        values={"finished_at": now, "error": {"type": "Undeliverable", "message": detail, "traceback": None}},
        detail=detail,
    )


def mark_unpublished(conn: Connection, pairs: Sequence[tuple[uuid.UUID, uuid.UUID]]) -> None:
    """The broker refused these deliveries: leave them for the reconcile loop to publish."""
    for job_id, delivery_id in pairs:
        conn.execute(
            sa.update(jobs)
            .where(jobs.c.id == job_id, jobs.c.delivery_id == delivery_id, jobs.c.state == JobState.QUEUED.value)
            .values(published_at=None)
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Renewal:
    """What one lease extension learned: the jobs it extended, and those of them whose cancel
    was requested (the worker stops them within the grace)."""

    extended: frozenset[uuid.UUID]
    cancel_requested: frozenset[uuid.UUID]


def extend_leases(
    conn: Connection, held: Mapping[uuid.UUID, uuid.UUID], *, now: dt.datetime, lease_s: float
) -> Renewal:
    """One statement for every job this process runs: push their leases forward. A held job
    missing from `extended` was taken away, and its process fences it at once; the same statement
    returns which of them have a cancel request (so a lost broadcast cannot lose a cancel)."""
    if not held:
        return Renewal(frozenset(), frozenset())
    result = conn.execute(
        sa.update(jobs)
        .where(
            jobs.c.id.in_(list(held)),
            jobs.c.delivery_id.in_(list(held.values())),
            jobs.c.state == JobState.RUNNING.value,
        )
        .values(heartbeat_at=now, lease_expires_at=now + seconds(lease_s))
        .returning(jobs.c.id, jobs.c.cancel_requested_at)
    )
    rows = list(result)
    return Renewal(frozenset(row[0] for row in rows), frozenset(row[0] for row in rows if row[1] is not None))


def report_progress(
    conn: Connection, reports: Mapping[uuid.UUID, tuple[uuid.UUID, Mapping[str, Any]]], *, actor: str, now: dt.datetime
) -> int:
    """The latest progress of running jobs (job -> (delivery, {fraction, message})): kept on the
    row and one event each (running -> running, `progress`, its detail the JSON the stream
    carries). Called by the heartbeat at most once per beat, with only what changed."""
    written = 0
    for job_id, (delivery_id, progress) in reports.items():
        kept = {**progress, "at": now.isoformat()}
        row = transition(
            conn, job_id, JobState.RUNNING, JobState.RUNNING, actor=actor, reason="progress", now=now,
            where=[jobs.c.delivery_id == delivery_id], values={"progress": kept},
            detail=json.dumps(dict(progress), separators=(",", ":")),
        )  # fmt: skip
        written += row is not None
    return written


def delete_jobs(conn: Connection, job_ids: Sequence[uuid.UUID]) -> int:
    """Delete finished jobs and their events (retention); the only delete of a job."""
    if not job_ids:
        return 0
    conn.execute(sa.delete(job_events).where(job_events.c.job_id.in_(list(job_ids))))
    return int(conn.execute(sa.delete(jobs).where(jobs.c.id.in_(list(job_ids)))).rowcount or 0)
