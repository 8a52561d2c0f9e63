"""Every read and write of `schedules` and `schedule_events`, in one place.

A change of a schedule and its `schedule_events` row are written in the caller's transaction.
The fire loop advances a schedule with a compare-and-set on `next_fire_at` (`advance`): of two
loops that read the same schedule, one moves it on and the other changes nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from worker.ledger import dialect
from worker.ledger.models import schedule_events, schedules

OVERLAP_POLICIES = ("skip", "allow", "cancel_previous")


@dataclasses.dataclass(frozen=True, slots=True)
class Schedule:
    """One row of `schedules` (every column, in the table's order)."""

    id: uuid.UUID
    tenant: str
    name: str
    type: str
    args: Any
    queue: str | None
    every_seconds: float | None
    cron: str | None
    timezone: str
    overlap: str
    catch_up_seconds: float | None
    paused: bool
    origin: str
    created_at: dt.datetime
    updated_at: dt.datetime
    next_fire_at: dt.datetime | None
    last_fire_at: dt.datetime | None
    last_job_id: uuid.UUID | None
    fired: int
    skipped: int

    @classmethod
    def maybe(cls, row: Row[Any] | None) -> Schedule | None:
        return None if row is None else cls(**row._mapping)


def create(conn: Connection, values: Mapping[str, Any], *, actor: str, now: dt.datetime) -> Schedule | None:
    """Insert a schedule and its `created` event; None when the tenant has one of that name."""
    stmt = dialect.of(conn).insert_on_conflict(schedules, values, ["tenant", "name"]).returning(*schedules.c)
    made = Schedule.maybe(conn.execute(stmt).first())
    if made is not None:
        audit(conn, made, actor=actor, action="created", at=now, detail=_timing(made))
    return made


def get(conn: Connection, schedule_id: uuid.UUID, tenant: str | None = None, *, lock: bool = False) -> Schedule | None:
    stmt = sa.select(schedules).where(schedules.c.id == schedule_id)
    if tenant is not None:
        stmt = stmt.where(schedules.c.tenant == tenant)
    if lock:  # FOR UPDATE on PostgreSQL; SQLite renders nothing (its writer lock is the database's)
        stmt = stmt.with_for_update()
    return Schedule.maybe(conn.execute(stmt).first())


def by_name(conn: Connection, tenant: str, name: str) -> Schedule | None:
    return Schedule.maybe(
        conn.execute(sa.select(schedules).where(schedules.c.tenant == tenant, schedules.c.name == name)).first()
    )


def list_for(conn: Connection, tenant: str, *, limit: int, origin: str | None = None) -> list[Schedule]:
    """A tenant's schedules by name (one index range: the unique (tenant, name))."""
    stmt = sa.select(schedules).where(schedules.c.tenant == tenant)
    if origin is not None:
        stmt = stmt.where(schedules.c.origin == origin)
    rows = conn.execute(stmt.order_by(schedules.c.name).limit(limit))
    return [Schedule(**row._mapping) for row in rows]


def list_all(conn: Connection, *, limit: int) -> list[Schedule]:
    """Every tenant's schedules (the CLI), by tenant and name."""
    rows = conn.execute(sa.select(schedules).order_by(schedules.c.tenant, schedules.c.name).limit(limit))
    return [Schedule(**row._mapping) for row in rows]


def due(conn: Connection, now: dt.datetime, *, limit: int) -> list[Schedule]:
    """Schedules not paused whose next fire is at or before `now`, oldest first: one range of
    the (paused, next_fire_at) index."""
    stmt = (
        sa.select(schedules)
        .where(schedules.c.paused == sa.false(), schedules.c.next_fire_at <= now)
        .order_by(schedules.c.next_fire_at)
        .limit(limit)
    )
    return [Schedule(**row._mapping) for row in conn.execute(stmt)]


def late(conn: Connection, before: dt.datetime, *, limit: int) -> list[Schedule]:
    """Schedules (not paused) whose next fire is older than `before`, the latest first: the
    missed-fire alert's input (one range of the (paused, next_fire_at) index)."""
    stmt = (
        sa.select(schedules)
        .where(schedules.c.paused == sa.false(), schedules.c.next_fire_at < before)
        .order_by(schedules.c.next_fire_at)
        .limit(limit)
    )
    return [Schedule(**row._mapping) for row in conn.execute(stmt)]


def update(
    conn: Connection,
    current: Schedule,
    values: Mapping[str, Any],
    *,
    actor: str,
    action: str,
    now: dt.datetime,
    detail: Mapping[str, Any] | None = None,
) -> Schedule | None:
    """Change `current` if no one changed it since it was read (its `updated_at`); None if someone did."""
    stmt = (
        sa.update(schedules)
        .where(schedules.c.id == current.id, schedules.c.updated_at == current.updated_at)
        .values(updated_at=now, **values)
        .returning(*schedules.c)
    )
    changed = Schedule.maybe(conn.execute(stmt).first())
    if changed is not None:
        audit(conn, changed, actor=actor, action=action, at=now, detail=dict(detail or {}))
    return changed


def advance(conn: Connection, current: Schedule, next_fire_at: dt.datetime) -> bool:
    """The fire loop's compare-and-set: move `next_fire_at` on only if it is still what this run
    read and the schedule is not paused; False means another run (or a change) got there first."""
    stmt = (
        sa.update(schedules)
        .where(
            schedules.c.id == current.id,
            schedules.c.next_fire_at == current.next_fire_at,
            schedules.c.paused == sa.false(),
        )
        .values(next_fire_at=next_fire_at)
    )
    return bool(conn.execute(stmt).rowcount == 1)


def count(
    conn: Connection, schedule_id: uuid.UUID, *, fired: int, skipped: int, values: Mapping[str, Any] | None = None
) -> None:
    """Add to a schedule's counts (and set `values`, e.g. its last fire)."""
    if not (fired or skipped or values):
        return
    stmt = (
        sa.update(schedules)
        .where(schedules.c.id == schedule_id)
        .values(fired=schedules.c.fired + fired, skipped=schedules.c.skipped + skipped, **dict(values or {}))
    )
    conn.execute(stmt)


def delete(conn: Connection, current: Schedule, *, actor: str, now: dt.datetime) -> bool:
    """Delete a schedule (its jobs and its audit stay)."""
    gone = conn.execute(sa.delete(schedules).where(schedules.c.id == current.id)).rowcount == 1
    if gone:
        audit(conn, current, actor=actor, action="deleted", at=now)
    return bool(gone)


def audit(
    conn: Connection,
    schedule: Schedule,
    *,
    actor: str,
    action: str,
    at: dt.datetime,
    detail: Mapping[str, Any] | None = None,
) -> None:
    conn.execute(
        schedule_events.insert().values(
            schedule_id=schedule.id, tenant=schedule.tenant, at=at, actor=actor, action=action, detail=detail
        )
    )


def events(conn: Connection, schedule_id: uuid.UUID, *, limit: int = 100) -> list[Row[Any]]:
    """A schedule's audit, newest first."""
    stmt = (
        sa.select(schedule_events)
        .where(schedule_events.c.schedule_id == schedule_id)
        .order_by(schedule_events.c.id.desc())
        .limit(limit)
    )
    return list(conn.execute(stmt))


def _timing(s: Schedule) -> dict[str, Any]:
    return {"every_seconds": s.every_seconds, "cron": s.cron, "timezone": s.timezone, "paused": s.paused}
