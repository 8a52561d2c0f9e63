"""PostgreSQL's form of the hot writes: row + event in ONE statement, built and compiled once.

Used by the ledger's PostgreSQL dialect (worker/ledger/dialect.py); each statement is cached and
run as a prepared statement (worker/ledger/prepared.py): a Core statement built per call costs
more Python than the write itself, and SQLAlchemy never caches a multi-VALUES insert.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from worker.ledger import events
from worker.ledger.events import Event, returning_with_events
from worker.ledger.models import UTCDateTime, jobs, queue_controls
from worker.ledger.prepared import execute_prepared
from worker.ledger.records import Job, NewJob
from worker.ledger.states import JobState

INCREMENT = object()  # a fenced-transition value meaning "the column plus one"

_NOW = sa.bindparam("p_now", type_=UTCDateTime)
_ACTOR = sa.bindparam("p_actor", type_=sa.String)


def _json_default(value: Any) -> str:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(f"not JSON: {type(value).__name__}")


@functools.lru_cache(maxsize=16)
def _create_statement(columns: tuple[str, ...]) -> sa.Select[Any]:
    """`INSERT ... SELECT FROM jsonb_populate_recordset(:rows)`: ONE bind parameter for any number
    of rows, so the statement text is the same for 1 or 1,000 rows and compiled once."""
    names = ", ".join(columns)
    inserted = (
        sa.text(
            f"INSERT INTO jobs ({names}) SELECT {names} "
            "FROM jsonb_populate_recordset(NULL::jobs, CAST(:rows AS jsonb)) "
            "ON CONFLICT (id) DO NOTHING RETURNING *"
        )
        .columns(*jobs.c)
        .cte("created")
    )
    return returning_with_events(inserted, events.created(_ACTOR, _NOW))


def by_shape(rows: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """`rows` grouped by their set of columns (one insert statement each), in first-seen order."""
    shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        shapes.setdefault(tuple(row), []).append(row)
    return list(shapes.values())


def create_jobs(conn: Connection, news: Sequence[NewJob], *, actor: str, now: dt.datetime) -> list[Job]:
    by_id: dict[uuid.UUID, Job] = {}
    for payload in by_shape([new.row() for new in news]):  # plain jobs, dispatched ones: two shapes
        stmt = _create_statement(tuple(payload[0]))
        params = {"rows": json.dumps(payload, default=_json_default), "p_now": now, "p_actor": actor}
        by_id.update((job.id, job) for job in map(Job.of, execute_prepared(conn, stmt, params)))
    missing = [new.id for new in news if new.id not in by_id]
    if missing:  # committed by an earlier try of this very write; ours (client-made uuid4 ids)
        by_id.update({job.id: job for job in map(Job.of, conn.execute(sa.select(jobs).where(jobs.c.id.in_(missing))))})
    # rows from a CTE come back in no promised order: put the caller's back
    return [by_id[new.id] for new in news]


def queue_paused() -> sa.ColumnElement[bool]:
    """`jobs.queue` is paused (`queue_controls`): a claim fenced on it starts nothing there."""
    return sa.exists(
        sa.select(queue_controls.c.queue).where(queue_controls.c.queue == jobs.c.queue, queue_controls.c.paused)
    )


@functools.lru_cache(maxsize=32)
def fenced_statement(
    frm: str, to: str, reason: str, columns: tuple[str, ...], increment: tuple[str, ...], unless_paused: bool = False
) -> sa.Select[Any]:
    """A transition fenced on (id, state, delivery_id, no cancel request) as one CTE statement whose
    every value is a bind parameter, so it is built and compiled once per shape."""
    values: dict[str, Any] = {"state": to, "updated_at": _NOW}
    values.update({c: sa.bindparam(f"p_{c}", type_=jobs.c[c].type) for c in columns})
    values.update({c: jobs.c[c] + 1 for c in increment})
    moved = (
        sa.update(jobs)
        .where(
            jobs.c.id == sa.bindparam("p_id", type_=sa.Uuid),
            jobs.c.state == frm,
            jobs.c.delivery_id == sa.bindparam("p_delivery", type_=sa.Uuid),
            jobs.c.cancel_requested_at.is_(None),  # such a job ends `stopped` (transitions.stop)
            *([~queue_paused()] if unless_paused else []),
        )
        .values(**values)
        .returning(*jobs.c)
        .cte("moved")
    )
    return returning_with_events(moved, events.Event(to, reason, actor=_ACTOR, at=_NOW, frm=frm))


def fenced(
    conn: Connection,
    job_id: uuid.UUID,
    delivery_id: uuid.UUID,
    event: Event,
    values: dict[str, Any],
    *,
    unless_paused: bool = False,
) -> Job | None:
    """Run the cached, prepared statement of a fenced transition; `values` may map a column to
    INCREMENT."""
    assert event.frm is not None
    plain = {k: v for k, v in values.items() if v is not INCREMENT}
    increment = tuple(k for k in values if k not in plain)
    stmt = fenced_statement(event.frm, event.to, event.reason, tuple(plain), increment, unless_paused)
    params = {"p_id": job_id, "p_delivery": delivery_id, "p_now": event.at, "p_actor": event.actor}
    params.update({f"p_{k}": v for k, v in plain.items()})
    return Job.maybe(execute_prepared(conn, stmt, params).first())


@functools.lru_cache(maxsize=1)
def _dispatch_statement() -> sa.Select[Any]:
    """held -> queued for many jobs, each with its own fresh delivery and ETA, and their events:
    ONE statement (the dispatcher's start of what it picked)."""
    moved = (
        sa.text(
            "UPDATE jobs SET state = 'queued', updated_at = :p_now, published_at = :p_now, "
            "delivery_id = d.delivery_id, not_before = d.eta "
            "FROM jsonb_to_recordset(CAST(:picks AS jsonb)) AS d(id uuid, delivery_id uuid, eta timestamptz) "
            "WHERE jobs.id = d.id AND jobs.state = 'held' RETURNING jobs.*"
        )
        .columns(*jobs.c)
        .cte("moved")
    )
    event = events.Event(JobState.QUEUED.value, "dispatched", actor=_ACTOR, at=_NOW, frm=JobState.HELD.value)
    return returning_with_events(moved, event)


def start_held(
    conn: Connection, picks: Sequence[tuple[uuid.UUID, uuid.UUID, dt.datetime | None]], *, actor: str, now: dt.datetime
) -> list[Job]:
    """(job, new delivery, ETA) triples moved held -> queued in one statement; a job no longer
    held (cancelled, or started by a racing dispatcher) is left out."""
    payload = [{"id": j, "delivery_id": d, "eta": eta} for j, d, eta in picks]
    params = {"picks": json.dumps(payload, default=_json_default), "p_now": now, "p_actor": actor}
    return [Job.of(row) for row in execute_prepared(conn, _dispatch_statement(), params)]
