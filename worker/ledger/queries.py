"""Every read of jobs and their events, in one place, each one bounded by an index or a LIMIT.

Writes live in `transitions`; a caller passes the connection, so a read can share a transaction
with the writes that follow it (the recovery loop's `FOR UPDATE SKIP LOCKED`).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from worker.clock import seconds
from worker.ledger import dialect
from worker.ledger.models import job_events, jobs
from worker.ledger.records import Job, Overdue
from worker.ledger.states import TERMINAL_STATES, JobState

LIVE_STATES = (JobState.QUEUED.value, JobState.RUNNING.value)


def get_job(conn: Connection, job_id: uuid.UUID, tenant: str | None = None) -> Job | None:
    stmt = sa.select(jobs).where(jobs.c.id == job_id)
    if tenant is not None:
        stmt = stmt.where(jobs.c.tenant == tenant)
    return Job.maybe(conn.execute(stmt).first())


def get_events(conn: Connection, job_id: uuid.UUID) -> list[Row[Any]]:
    stmt = sa.select(job_events).where(job_events.c.job_id == job_id).order_by(job_events.c.id)
    return list(conn.execute(stmt))


def find_by_idempotency_key(conn: Connection, tenant: str, key: str) -> Job | None:
    return Job.maybe(
        conn.execute(sa.select(jobs).where(jobs.c.tenant == tenant, jobs.c.idempotency_key == key)).first()
    )


@dataclass(frozen=True)
class JobFilter:
    """Which of a tenant's jobs a list, a count or a bulk action covers: every field given must
    match. The same filter backs `GET /jobs`, the console's jobs page and its bulk buttons, so
    "Retry all matching" acts on exactly the jobs the page listed."""

    tenant: str
    state: str | None = None
    type: str | None = None
    queue: str | None = None
    schedule_id: uuid.UUID | None = None
    workflow_id: uuid.UUID | None = None
    created_after: dt.datetime | None = None  # inclusive
    created_before: dt.datetime | None = None  # exclusive
    args_contains: str | None = None  # a substring of the args' JSON text, any case

    def clauses(self) -> list[sa.ColumnElement[bool]]:
        """The WHERE of this filter. Each equality rides one of the (tenant, field, created_at,
        id) indexes; the time range bounds that index's range; the text is checked on the rows
        the index walk reaches (a LIMIT stops it; a rare text over a wide range scans: narrow
        the range, and the console's statement timeout bounds the cost)."""
        where: list[sa.ColumnElement[bool]] = [jobs.c.tenant == self.tenant]
        equal = {"state": self.state, "type": self.type, "queue": self.queue,
                 "schedule_id": self.schedule_id, "workflow_id": self.workflow_id}  # fmt: skip
        where += [jobs.c[column] == value for column, value in equal.items() if value is not None]
        if self.created_after is not None:
            where.append(jobs.c.created_at >= self.created_after)
        if self.created_before is not None:
            where.append(jobs.c.created_at < self.created_before)
        if self.args_contains:
            escaped = self.args_contains.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append(sa.cast(jobs.c.args, sa.Text).ilike(f"%{escaped}%", escape="\\"))
        return where

    def given(self) -> dict[str, str]:
        """The fields set, as text: what the action log records and the console links carry."""
        return {name: str(value) for name, value in vars(self).items() if value not in (None, "")}


def list_jobs(
    conn: Connection,
    tenant: str,
    *,
    state: str | None = None,
    type_: str | None = None,
    queue: str | None = None,
    schedule_id: uuid.UUID | None = None,
    limit: int = 50,
    before: tuple[dt.datetime, uuid.UUID] | None = None,
    payloads: Collection[str] = ("args", "result"),
    workflow_id: uuid.UUID | None = None,
    created_after: dt.datetime | None = None,
    created_before: dt.datetime | None = None,
    args_contains: str | None = None,
) -> list[Job]:
    """A tenant's jobs, newest first; `before` is the keyset cursor (created_at, id) of the last row seen."""
    match = JobFilter(
        tenant, state, type_, queue, schedule_id, workflow_id, created_after, created_before, args_contains
    )
    return page(conn, match, limit=limit, before=before, payloads=payloads)


def page(
    conn: Connection,
    match: JobFilter,
    *,
    limit: int = 50,
    before: tuple[dt.datetime, uuid.UUID] | None = None,
    payloads: Collection[str] = ("args", "result"),
) -> list[Job]:
    """The jobs `match` covers, newest first, keyset-paginated (`before`: the (created_at, id)
    of the last row seen).

    Of `args` and `result`, only those named in `payloads` are read; the others come back None
    without leaving the database (each may be tens of KB, and a page holds hundreds of rows)."""
    columns = [c if c.name in payloads or c.name not in ("args", "result") else sa.null().label(c.name) for c in jobs.c]
    stmt = sa.select(*columns).where(*match.clauses())
    if before is not None:
        cursor = sa.tuple_(
            sa.literal(before[0], type_=jobs.c.created_at.type), sa.literal(before[1], type_=jobs.c.id.type)
        )
        stmt = stmt.where(sa.tuple_(jobs.c.created_at, jobs.c.id) < cursor)
    stmt = stmt.order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit)
    return [Job.of(row) for row in conn.execute(stmt)]


def count_matching(conn: Connection, match: JobFilter, *, up_to: int, states: Sequence[str] | None = None) -> int:
    """How many jobs `match` covers (only those in `states`, if given), counted up to `up_to`:
    a bulk button says "more than N" rather than count a million rows to say how many."""
    where = match.clauses()
    if states is not None:
        where += _actionable(states)
    inner = sa.select(sa.literal(1)).select_from(jobs).where(*where).limit(up_to).subquery()
    return int(conn.scalar(sa.select(sa.func.count()).select_from(inner)) or 0)


# waiting: a workflow's step not released yet; held: a job the dispatcher has not started yet
CANCELLABLE = ("waiting", "held", "queued", "running")
RETRYABLE = ("dead",)


def matching_ids(conn: Connection, match: JobFilter, *, states: Sequence[str], limit: int) -> list[uuid.UUID]:
    """Ids of the jobs `match` covers in `states`, oldest first, at most `limit`: what one bulk
    request acts on. A running job already asked to stop is left out (asking again changes nothing)."""
    stmt = sa.select(jobs.c.id).where(*match.clauses(), *_actionable(states))
    return list(conn.scalars(stmt.order_by(jobs.c.created_at, jobs.c.id).limit(limit)))


def _actionable(states: Sequence[str]) -> list[sa.ColumnElement[bool]]:
    """Jobs in `states` a bulk action would change: a running job already asked to stop is not
    (asking again changes nothing), so a count and the action agree."""
    where: list[sa.ColumnElement[bool]] = [jobs.c.state.in_(list(states))]
    if "running" in states:  # only then: a count of dead jobs stays an index-only range
        where.append(sa.or_(jobs.c.state != "running", jobs.c.cancel_requested_at.is_(None)))
    return where


def cancellable(
    conn: Connection,
    tenant: str,
    *,
    limit: int,
    state: str | None = None,
    type_: str | None = None,
    queue: str | None = None,
    schedule_id: uuid.UUID | None = None,
    workflow_id: uuid.UUID | None = None,
) -> list[uuid.UUID]:
    """Ids of a tenant's jobs a bulk cancel acts on, oldest first, at most `limit`: queued ones,
    and running ones not asked to stop yet (a job asked already is not counted again)."""
    match = JobFilter(tenant, None, type_, queue, schedule_id, workflow_id)
    return matching_ids(conn, match, states=[state] if state else CANCELLABLE, limit=limit)


def count_events(conn: Connection, job_ids: Sequence[uuid.UUID], reason: str) -> dict[uuid.UUID, int]:
    """How many events with `reason` each job has (e.g. how often its message was lost)."""
    rows = conn.execute(
        sa.select(job_events.c.job_id, sa.func.count())
        .where(job_events.c.job_id.in_(list(job_ids)), job_events.c.reason == reason)
        .group_by(job_events.c.job_id)
    ).all()
    return {job_id: int(n) for job_id, n in rows}


def live_counts(conn: Connection, queue: str) -> dict[str, int]:
    """Queued (ready) and running jobs of a queue: index-only range scans on (state, queue, ...)."""
    rows = conn.execute(
        sa.select(jobs.c.state, sa.func.count())
        .where(jobs.c.queue == queue, jobs.c.state.in_(LIVE_STATES))
        .group_by(jobs.c.state)
    ).all()
    counts = {state: int(n) for state, n in rows}
    return {"ready": counts.get(JobState.QUEUED.value, 0), "running": counts.get(JobState.RUNNING.value, 0)}


def live_counts_by_queue(conn: Connection) -> list[tuple[str, str, int]]:
    """(state, queue, count) of every queued or running job: an index range, whatever the ledger's size."""
    rows = conn.execute(
        sa.select(jobs.c.state, jobs.c.queue, sa.func.count())
        .where(jobs.c.state.in_(LIVE_STATES))
        .group_by(jobs.c.state, jobs.c.queue)
    ).all()
    return [(state, queue, int(n)) for state, queue, n in rows]


def tenant_queued(conn: Connection, tenant: str, *, up_to: int, queue: str | None = None) -> int:
    """A tenant's jobs waiting to run (in `queue` only, if given): queued plus held (a job the
    dispatcher has not started yet waits all the same), each counted up to `up_to` (a quota check
    needs no exact figure past it). Two index ranges over the tenant's waiting jobs, in one
    statement."""

    def bounded(state: JobState) -> sa.ScalarSelect[Any]:
        limited = sa.select(jobs.c.id).where(jobs.c.tenant == tenant, jobs.c.state == state.value)
        if queue is not None:
            limited = limited.where(jobs.c.queue == queue)
        return sa.select(sa.func.count()).select_from(limited.limit(up_to).subquery()).scalar_subquery()

    return min(up_to, int(conn.scalar(sa.select(bounded(JobState.QUEUED) + bounded(JobState.HELD))) or 0))


def held_in_queue(conn: Connection, queue: str, *, up_to: int) -> int:
    """A queue's jobs held for the dispatcher, counted up to `up_to`: an index-only range of the
    held partial index (ix_jobs_held_queue_tenant_rank), however large the ledger."""
    limited = sa.select(jobs.c.queue).where(jobs.c.queue == queue, jobs.c.state == JobState.HELD.value).limit(up_to)
    return int(conn.scalar(sa.select(sa.func.count()).select_from(limited.subquery())) or 0)


def expired_leases(conn: Connection, now: dt.datetime, limit: int) -> list[Job]:
    """Running jobs past their lease, oldest first; rows another recoverer holds are skipped."""
    stmt = (
        sa.select(jobs)
        .where(jobs.c.state == JobState.RUNNING.value, jobs.c.lease_expires_at < now)
        .order_by(jobs.c.lease_expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [Job.of(row) for row in conn.execute(stmt)]


def overdue(conn: Connection, now: dt.datetime, grace_s: float, limit: int) -> list[Overdue]:
    """Running jobs past start + timeout + grace, longest running first: id, delivery_id,
    timeout_s and started_at only (never args or result).

    The deadline is computed in SQL; `started_at < now - grace` (every timeout is positive) keeps
    the read an index range on (state, started_at) that stops at the LIMIT.
    """
    late = dialect.of(conn).ran_longer_than(jobs.c.timeout_s + grace_s, now)
    stmt = (
        sa.select(jobs.c.id, jobs.c.delivery_id, jobs.c.timeout_s, jobs.c.started_at)
        .where(jobs.c.state == JobState.RUNNING.value, jobs.c.started_at < now - seconds(grace_s), late)
        .order_by(jobs.c.started_at)
        .limit(limit)
    )
    return [Overdue(*row) for row in conn.execute(stmt)]


def _queued(conn: Connection, where: sa.ColumnElement[bool], limit: int) -> list[Job]:
    """Oldest published first: the order of the (state, published_at, created_at) index, so the
    LIMIT ends the read instead of a sort of the whole queued backlog."""
    stmt = (
        sa.select(jobs)
        .where(jobs.c.state == JobState.QUEUED.value, where)
        .order_by(jobs.c.published_at, jobs.c.created_at)
        .limit(limit)
    )
    return [Job.of(row) for row in conn.execute(stmt)]


def unpublished(conn: Connection, limit: int) -> list[Job]:
    """Queued jobs whose publish the broker refused (the outbox cleared `published_at`), oldest first."""
    return _queued(conn, jobs.c.published_at.is_(None), limit)


def published_before(conn: Connection, marker: dt.datetime, limit: int) -> list[Job]:
    """Queued jobs published before `marker` (a broker restart may have lost their messages)."""
    return _queued(conn, jobs.c.published_at < marker, limit)


def queued_since_before(conn: Connection, cutoff: dt.datetime, limit: int) -> list[Job]:
    """Queued jobs published before `cutoff` and due before it: by now a worker should have taken them."""
    due = sa.or_(jobs.c.not_before.is_(None), jobs.c.not_before < cutoff)
    return _queued(conn, sa.and_(jobs.c.published_at < cutoff, due), limit)


def finished_before(conn: Connection, cutoff: dt.datetime, limit: int) -> list[uuid.UUID]:
    """Ids of jobs in a terminal state that finished before `cutoff` (retention)."""
    stmt = (
        sa.select(jobs.c.id)
        .where(jobs.c.state.in_([s.value for s in TERMINAL_STATES]), jobs.c.finished_at < cutoff)
        .limit(limit)
    )
    return list(conn.scalars(stmt))


# --- live updates (api/stream_hub.py): the job_events id is the stream's cursor ---------------

_STREAM_COLUMNS = (
    job_events.c.id,
    job_events.c.job_id,
    job_events.c.from_state,
    job_events.c.to_state,
    job_events.c.reason,
    job_events.c.attempt,
    job_events.c.at,
    job_events.c.detail,
    jobs.c.tenant,
    jobs.c.queue,
    jobs.c.type,
    jobs.c.workflow_id,
    jobs.c.step,
)


def stream_tail(conn: Connection, after: int | None, holes: Sequence[tuple[int, int]], limit: int) -> list[Row[Any]]:
    """Events past `after` (None: none) or in a known hole range (lo, hi inclusive), oldest first,
    with their job's tenant, queue and type: the one tail query each API process runs for every
    stream client (PK range scans; the caller bounds the number of ranges)."""
    spans = [job_events.c.id.between(lo, hi) for lo, hi in holes]
    where = sa.or_(sa.false(), *spans) if after is None else sa.or_(job_events.c.id > after, *spans)
    stmt = (
        sa.select(*_STREAM_COLUMNS)
        .join(jobs, jobs.c.id == job_events.c.job_id)
        .where(where)
        .order_by(job_events.c.id)
        .limit(limit)
    )
    return list(conn.execute(stmt))


def stream_replay(
    conn: Connection,
    tenant: str,
    *,
    after: int,
    upto: int,
    limit: int,
    job_ids: Sequence[uuid.UUID] = (),
    queue: str | None = None,
    type_: str | None = None,
) -> list[Row[Any]]:
    """A tenant's events with `after < id <= upto`, oldest first: what a resuming stream missed.

    With `job_ids`, each job's events are read on its (job_id, id) index from its first event
    after `after`, then merged: O(those jobs' events), however long the ledger and whatever
    `after` (0 included). Without, the caller bounds `upto - after` (the tenant is on `jobs`)."""

    def read(*where: sa.ColumnElement[bool]) -> sa.Select[Any]:
        stmt = (
            sa.select(*_STREAM_COLUMNS)
            .join(jobs, jobs.c.id == job_events.c.job_id)
            .where(jobs.c.tenant == tenant, job_events.c.id > after, job_events.c.id <= upto, *where)
        )
        if queue:
            stmt = stmt.where(jobs.c.queue == queue)
        if type_:
            stmt = stmt.where(jobs.c.type == type_)
        return stmt.order_by(job_events.c.id).limit(limit)

    if not job_ids:
        return list(conn.execute(read()))
    if len(job_ids) == 1:
        return list(conn.execute(read(job_events.c.job_id == job_ids[0])))
    # one index range per job (an IN list would let the planner walk the primary key from `after`)
    per_job = [sa.select(read(job_events.c.job_id == job_id).subquery()) for job_id in job_ids]
    merged = sa.union_all(*per_job).subquery()
    return list(conn.execute(sa.select(merged).order_by(merged.c.id).limit(limit)))


def max_event_id(conn: Connection) -> int:
    return int(conn.scalar(sa.select(sa.func.coalesce(sa.func.max(job_events.c.id), 0))) or 0)


def event_gaps(conn: Connection, floor: int, end: int, limit: int) -> list[tuple[int, int]]:
    """The newest `limit` runs of missing ids (lo, hi inclusive) between event ids in
    (floor, end], in id order: where a stream tail starting at `end` may still see commits."""
    prev = sa.func.lag(job_events.c.id, 1, floor).over(order_by=job_events.c.id)
    ids = (
        sa.select(job_events.c.id.label("id"), prev.label("prev"))
        .where(job_events.c.id > floor, job_events.c.id <= end)
        .subquery()
    )
    stmt = (
        sa.select(ids.c.prev + 1, ids.c.id - 1).where(ids.c.id > ids.c.prev + 1).order_by(ids.c.id.desc()).limit(limit)
    )
    return [(int(lo), int(hi)) for lo, hi in reversed(conn.execute(stmt).all())]


def snapshot_horizon(conn: Connection) -> tuple[int, int]:
    """(xmin, xmax) of this transaction's snapshot on PostgreSQL: once a later snapshot's xmin
    reaches an earlier one's xmax, every transaction running at the earlier one has ended.
    Elsewhere (SQLite, one writer at a time) (0, 0): holes are then settled by time alone."""
    return dialect.of(conn).snapshot_horizon(conn)


def server_connections(conn: Connection) -> dict[str, Any] | None:
    """The database server's view of its connections: `busy_by_process` (connections each medic
    process holds checked out), `connections` (client slots used) and `max_connections`; None
    where there is no server (SQLite). Read before the jobs reads of a snapshot: a ledger slowed
    by locks would otherwise show idle pools by the time it answers."""
    return dialect.of(conn).server_connections(conn)


def oldest_queued_by_queue(conn: Connection) -> dict[str, dt.datetime]:
    """Per queue, when its oldest queued job became ready (created, or not_before if later):
    one pass over the queued entries of the (state, queue, created_at, not_before) index, which
    holds both times: an index-only scan, no heap fetch per queued job (migration 0005)."""
    ready = sa.case((jobs.c.not_before > jobs.c.created_at, jobs.c.not_before), else_=jobs.c.created_at)
    rows = conn.execute(
        sa.select(jobs.c.queue, sa.func.min(ready)).where(jobs.c.state == JobState.QUEUED.value).group_by(jobs.c.queue)
    ).all()
    return {queue: at for queue, at in rows if at is not None}


def dead_since(conn: Connection, since: dt.datetime) -> int:
    """Jobs that ended dead since `since`: a range of the finished_at index."""
    return int(
        conn.scalar(sa.select(sa.func.count()).where(jobs.c.finished_at >= since, jobs.c.state == JobState.DEAD.value))
        or 0
    )


def finished_per_minute(conn: Connection, since: dt.datetime, tenant: str | None) -> list[tuple[int, str, int]]:
    """(minute as epoch seconds // 60, state, jobs) of the jobs that finished since `since`: the
    console's throughput and failure chart, an index range on `finished_at`."""
    minute = dialect.of(conn).epoch_minute(jobs.c.finished_at)
    stmt = sa.select(minute.label("minute"), jobs.c.state, sa.func.count()).where(jobs.c.finished_at >= since)
    if tenant is not None:
        stmt = stmt.where(jobs.c.tenant == tenant)
    rows = conn.execute(stmt.group_by(sa.literal_column("minute"), jobs.c.state))
    return [(int(m), str(state), int(n)) for m, state, n in rows]


def job_of_delivery(conn: Connection, delivery_id: uuid.UUID, tenant: str) -> uuid.UUID | None:
    """The tenant's job whose current or past delivery is `delivery_id` (Flower's task id). No
    index serves it (the hot path pays for none): a rare lookup from the console, bounded by the
    ledger's statement timeout."""
    current = sa.select(jobs.c.id).where(jobs.c.tenant == tenant, jobs.c.delivery_id == delivery_id)
    found: uuid.UUID | None = conn.scalar(current.limit(1))
    if found is not None:
        return found
    past = (
        sa.select(job_events.c.job_id)
        .join(jobs, jobs.c.id == job_events.c.job_id)
        .where(job_events.c.delivery_id == delivery_id, jobs.c.tenant == tenant)
        .limit(1)
    )
    earlier: uuid.UUID | None = conn.scalar(past)
    return earlier
