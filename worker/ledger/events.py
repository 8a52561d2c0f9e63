"""The `job_events` row, defined once: every change of a job records one, in the same statement
or transaction as the change, whichever form the dialect writes it in.

An event is the change's own facts (from and to which state, who, why, when, a detail) plus three
columns of the job row the change left (its id, delivery and attempt). `Event.values` names every
column in one place, for a record read back (one row to insert) and for the rows a statement
changed (their columns, for `INSERT ... SELECT`) alike: a new event column is one edit here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from worker.ledger.models import job_events
from worker.ledger.records import Job


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """What one change records. `actor` and `at` may be SQL expressions (the bind parameters of a
    statement built once and cached); every other field is a value."""

    to: str
    reason: str
    actor: Any
    at: Any
    frm: str | None = None
    detail: str | None = None

    def values(self, job: Any) -> dict[str, Any]:
        """The event's columns for `job`: a `Job`, or the columns (`cte.c`) of the rows a
        statement changed."""
        return {
            "job_id": job.id,
            "at": self.at,
            "from_state": self.frm,
            "to_state": job.state if self.to == ROW_STATE else self.to,
            "actor": self.actor,
            "reason": self.reason,
            "delivery_id": job.delivery_id,
            "attempt": job.attempts,
            "detail": self.detail,
        }

    def insert_for(self, jobs: Sequence[Job]) -> tuple[sa.Insert, list[dict[str, Any]]]:
        """One event per record: the insert and its rows (executemany)."""
        return job_events.insert(), [self.values(job) for job in jobs]

    def insert_from(self, changed: sa.CTE) -> sa.Insert:
        """One event per row of `changed`, in SQL: `INSERT INTO job_events SELECT ... FROM changed`."""
        values = self.values(changed.c)
        return job_events.insert().from_select(list(values), sa.select(*(_sql(k, v) for k, v in values.items())))


ROW_STATE = "<the row's state>"  # an event whose to_state is the state the write left the row in


def created(actor: Any, at: Any) -> Event:
    """The event of a job's creation (the only write of an initial state: `queued`, or `held`
    for a job the dispatcher starts)."""
    return Event(ROW_STATE, "enqueued", actor=actor, at=at)


def _sql(column: str, value: Any) -> sa.ColumnElement[Any]:
    if isinstance(value, sa.ColumnElement):
        return value
    if value is None:
        return sa.null()
    return sa.literal(value, job_events.c[column].type)


def returning_with_events(changed: sa.CTE, event: Event) -> sa.Select[Any]:
    """`SELECT * FROM changed`, also inserting one event per row of `changed` (a DML CTE): the
    change and its events in ONE statement, one event per row changed by construction."""
    return sa.select(*changed.c).add_cte(event.insert_from(changed).cte("ev"))
