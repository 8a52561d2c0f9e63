"""Every write of a job: creation, each state change, lease extension, and deletion.

Every state change is `UPDATE jobs ... WHERE id = :id AND state = :expected [AND fence]` plus a
`job_events` row, in the caller's transaction. A change that matches no row returns None: the
caller lost a race (another delivery, a recovery, a cancel) and must not act on the job.

On PostgreSQL the row and its event are ONE statement (`WITH moved AS (UPDATE ... RETURNING *),
ev AS (INSERT INTO job_events SELECT ... FROM moved) SELECT * FROM moved`): one round trip, and one
event row per row changed, by construction. SQLite keeps the two statements.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from worker.clock import seconds
from worker.errors import InvalidTransitionError
from worker.ledger import pg_statements as pg
from worker.ledger.models import JobRow, job_events, jobs
from worker.ledger.records import NewJob
from worker.ledger.states import JobState, is_allowed


def new_delivery_id() -> uuid.UUID:
    return uuid.uuid4()


def backoff_delay(backoff_s: float, attempts: int, cap_s: float) -> float:
    """Exponential back-off after the `attempts`-th failed attempt: b, 2b, 4b ... capped."""
    if backoff_s <= 0:
        return 0.0
    return float(min(cap_s, backoff_s * 2 ** max(0, attempts - 1)))


def _created_events(rows: Sequence[Mapping[str, Any]], *, actor: str, now: dt.datetime) -> list[dict[str, Any]]:
    return [
        {
            "job_id": r["id"],
            "at": now,
            "from_state": None,
            "to_state": JobState.QUEUED.value,
            "actor": actor,
            "reason": "enqueued",
            "delivery_id": r["delivery_id"],
            "attempt": 0,
        }
        for r in rows
    ]


def create_jobs(conn: Connection, rows: Sequence[Mapping[str, Any]], *, actor: str, now: dt.datetime) -> list[JobRow]:
    """Insert new `queued` jobs and their creation events (the only write of an initial state).

    On PostgreSQL: one statement, `ON CONFLICT (id) DO NOTHING` so that re-running it after a lost
    connection (db.write) cannot duplicate a job: a row the first try committed is read back."""
    rows = [r.row() if isinstance(r, NewJob) else r for r in rows]  # TEMP until the ledger takes NewJob
    if not rows:
        return []
    if conn.dialect.name == "postgresql":
        return pg.create_jobs(conn, rows, actor=actor, now=now)
    inserted = conn.execute(
        jobs.insert().returning(*jobs.c, sort_by_parameter_order=True),
        [dict(r, state=JobState.QUEUED.value) for r in rows],
    ).all()
    conn.execute(job_events.insert(), _created_events(rows, actor=actor, now=now))
    return list(inserted)


def create_job_once(conn: Connection, row: Mapping[str, Any], *, actor: str, now: dt.datetime) -> JobRow | None:
    """Insert a job unless its (tenant, idempotency_key) exists; None if it did (race-free)."""
    row = row.row() if isinstance(row, NewJob) else row  # TEMP until the ledger takes NewJob
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = (
        dialect_insert(jobs)
        .values(**row, state=JobState.QUEUED.value)
        .on_conflict_do_nothing(index_elements=["tenant", "idempotency_key"])
        .returning(*jobs.c)
    )
    inserted = conn.execute(stmt).first()
    if inserted is not None:
        conn.execute(job_events.insert(), _created_events([row], actor=actor, now=now))
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
) -> JobRow | None:
    """Move one job from `frm` to `to` if it is still in `frm` (and matches `where`).

    Raises:
        InvalidTransitionError: the state machine does not allow `frm -> to`.
    """
    if not is_allowed(frm, to):
        raise InvalidTransitionError(f"{frm} -> {to} is not a transition", frm=frm, to=to)
    stmt = (
        sa.update(jobs)
        .where(jobs.c.id == job_id, jobs.c.state == frm.value, *where)
        .values(state=to.value, updated_at=now, **(values or {}))
        .returning(*jobs.c)
    )
    if conn.dialect.name == "postgresql":
        moved = stmt.cte("moved")
        return conn.execute(
            pg.with_events(moved, frm=frm.value, to=to.value, actor=actor, reason=reason, now=now, detail=detail)
        ).first()
    row = conn.execute(stmt).first()
    if row is None:
        return None
    conn.execute(
        job_events.insert().values(
            job_id=job_id,
            at=now,
            from_state=frm.value,
            to_state=to.value,
            actor=actor,
            reason=reason,
            delivery_id=row.delivery_id,
            attempt=row.attempts,
            detail=detail,
        )
    )
    return row


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
    values: Mapping[str, Any],
) -> JobRow | None:
    """A hot transition fenced on the delivery: the prebuilt statement on PostgreSQL, the general
    `transition` elsewhere. `values` may map a column to pg.INCREMENT."""
    if conn.dialect.name != "postgresql":
        general = {k: (jobs.c[k] + 1 if v is pg.INCREMENT else v) for k, v in values.items()}
        return transition(
            conn, job_id, frm, to, actor=actor, reason=reason, now=now,
            where=[jobs.c.delivery_id == delivery_id], values=general,
        )  # fmt: skip
    if not is_allowed(frm, to):
        raise InvalidTransitionError(f"{frm} -> {to} is not a transition", frm=frm, to=to)
    plain = {k: v for k, v in values.items() if v is not pg.INCREMENT}
    stmt = pg.fenced_statement(frm.value, to.value, reason, tuple(plain), tuple(k for k in values if k not in plain))
    params = {"p_id": job_id, "p_delivery": delivery_id, "p_now": now, "p_actor": actor}
    params.update({f"p_{k}": v for k, v in plain.items()})
    return pg.execute_prepared(conn, stmt, params).first()


def claim(
    conn: Connection,
    job_id: uuid.UUID,
    delivery_id: uuid.UUID,
    *,
    worker: str,
    pid: int,
    now: dt.datetime,
    lease_s: float,
) -> JobRow | None:
    """Start a delivery: only the message carrying the current delivery_id can claim a queued job."""
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
            "attempts": pg.INCREMENT,
            "started_at": now,
            "heartbeat_at": now,
            "lease_expires_at": now + seconds(lease_s),
            "finished_at": None,
            "worker": worker,
            "worker_pid": pid,
        },
    )


def succeed(
    conn: Connection, job_id: uuid.UUID, delivery_id: uuid.UUID, result: Any, *, actor: str, now: dt.datetime
) -> JobRow | None:
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
    job: JobRow,
    *,
    reason: str,
    actor: str,
    now: dt.datetime,
    max_backoff_s: float,
    error: Mapping[str, Any] | None = None,
    frm: JobState = JobState.RUNNING,
    immediate: bool = False,
) -> JobRow | None:
    """End a failed delivery of `job`: `queued` with back-off if attempts are left, else `dead`.

    The one place that decides "retry or give up". Fenced on the delivery and attempt that
    `job` describes, so a late report of an old delivery changes nothing.
    """
    fence = [jobs.c.delivery_id == job.delivery_id, jobs.c.attempts == job.attempts]
    common: dict[str, Any] = {"lease_expires_at": None}
    if error is not None:
        common["error"] = dict(error)
    if job.attempts < job.max_attempts:
        delay = 0.0 if immediate else backoff_delay(job.backoff_s, job.attempts, max_backoff_s)
        return transition(
            conn,
            job.id,
            frm,
            JobState.QUEUED,
            actor=actor,
            reason=reason,
            now=now,
            where=fence,
            values={
                **common,
                "delivery_id": new_delivery_id(),
                "not_before": now + seconds(delay) if delay else None,
                "published_at": now,
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
        detail=f"gave up after {job.attempts} attempt(s)",
    )


def time_out(
    conn: Connection, job: JobRow, *, actor: str, now: dt.datetime, max_backoff_s: float, detail: str
) -> JobRow | None:
    """running -> timed_out -> queued | dead, in the caller's transaction."""
    timed = transition(
        conn,
        job.id,
        JobState.RUNNING,
        JobState.TIMED_OUT,
        actor=actor,
        reason="timeout",
        now=now,
        where=[jobs.c.delivery_id == job.delivery_id],
        values={"error": {"type": "Timeout", "message": detail, "traceback": None}},
        detail=detail,
    )
    if timed is None:
        return None
    return give_back(
        conn, timed, reason="timeout", actor=actor, now=now, max_backoff_s=max_backoff_s, frm=JobState.TIMED_OUT
    )


def cancel(
    conn: Connection, job_id: uuid.UUID, tenant: str, *, actor: str, now: dt.datetime
) -> tuple[JobState, JobRow] | None:
    """Cancel a queued or running job of `tenant`; returns the state it left and the new row."""
    for frm in (JobState.QUEUED, JobState.RUNNING):
        row = transition(
            conn,
            job_id,
            frm,
            JobState.CANCELLED,
            actor=actor,
            reason="cancelled",
            now=now,
            where=[jobs.c.tenant == tenant],
            values={"finished_at": now, "lease_expires_at": None},
        )
        if row is not None:
            return frm, row
    return None


def retry_dead(conn: Connection, job_id: uuid.UUID, tenant: str, *, actor: str, now: dt.datetime) -> JobRow | None:
    """Manual retry of a dead job: a fresh set of attempts and a fresh delivery."""
    return transition(
        conn,
        job_id,
        JobState.DEAD,
        JobState.QUEUED,
        actor=actor,
        reason="manual_retry",
        now=now,
        where=[jobs.c.tenant == tenant],
        values={
            "attempts": 0,
            "delivery_id": new_delivery_id(),
            "not_before": None,
            "finished_at": None,
            "published_at": now,
        },
    )


def republish(conn: Connection, job: JobRow, *, actor: str, reason: str, now: dt.datetime) -> JobRow | None:
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


def give_up_undeliverable(conn: Connection, job: JobRow, *, actor: str, now: dt.datetime, detail: str) -> JobRow | None:
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


def extend_leases(conn: Connection, held: Mapping[uuid.UUID, uuid.UUID], *, now: dt.datetime, lease_s: float) -> int:
    """One statement for every job this process runs: push their leases forward."""
    if not held:
        return 0
    result = conn.execute(
        sa.update(jobs)
        .where(
            jobs.c.id.in_(list(held)),
            jobs.c.delivery_id.in_(list(held.values())),
            jobs.c.state == JobState.RUNNING.value,
        )
        .values(heartbeat_at=now, lease_expires_at=now + seconds(lease_s))
    )
    return int(result.rowcount or 0)


def delete_jobs(conn: Connection, job_ids: Sequence[uuid.UUID]) -> int:
    """Delete finished jobs and their events (retention); the only delete of a job."""
    if not job_ids:
        return 0
    conn.execute(sa.delete(job_events).where(job_events.c.job_id.in_(list(job_ids))))
    return int(conn.execute(sa.delete(jobs).where(jobs.c.id.in_(list(job_ids)))).rowcount or 0)
