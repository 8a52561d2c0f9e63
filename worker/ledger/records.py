"""The typed records that cross the job's path: a job to create (`NewJob`) and a job read back
(`Job`). The ledger takes the one and returns the other; nothing on the path passes rows or dicts.

Both are frozen: a record is a snapshot of one moment of the ledger, and a change is a new
transition that returns a new record, never an edit in place.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any, cast

from sqlalchemy.engine import Row


@dataclasses.dataclass(frozen=True, slots=True)
class Flow:
    """How the dispatcher starts a job (worker/ledger/dispatch.py): its place in line (`rank`),
    the key whose slot it holds while it runs (one of `limit`), the rate bucket a start of it
    takes a token of (one every `rate_interval_s`)."""

    rank: dt.datetime
    key: str | None = None
    limit: int | None = None
    rate_key: str | None = None
    rate_interval_s: float | None = None

    def columns(self) -> dict[str, Any]:
        return {
            "dispatch": True,
            "dispatch_rank": self.rank,
            "flow_key": self.key,
            "flow_limit": self.limit,
            "rate_key": self.rate_key,
            "rate_interval_s": self.rate_interval_s,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class NewJob:
    """A validated job, ready to insert as `queued` (built by worker.accept, written by
    transitions.create_jobs). Its `id` and first `delivery_id` are made here, on the client, so a
    write whose reply was lost can be read back by id."""

    id: uuid.UUID
    type: str
    queue: str
    priority: int
    tenant: str
    args: Mapping[str, Any]
    max_attempts: int
    timeout_s: float
    backoff_s: float
    delivery_id: uuid.UUID
    created_at: dt.datetime
    idempotency_key: str | None = None
    workflow_id: uuid.UUID | None = None  # a workflow's step (worker/ledger/workflows.py writes those)
    step: str | None = None
    flow: Flow | None = None  # the dispatcher starts it: it is written `held`, and not published

    @property
    def initial_state(self) -> str:
        """`held` for a job the dispatcher starts, else `queued` (a workflow's step that waits
        for others is written `waiting` by worker/ledger/workflows.py)."""
        return "held" if self.flow is not None else "queued"

    def row(self) -> dict[str, Any]:
        """The columns of the insert (the event is added by the ledger). A workflow's step adds
        its two columns, a dispatched job its flow's; a plain job's statement stays the one it
        always was."""
        row = {
            "id": self.id,
            "type": self.type,
            "queue": self.queue,
            "priority": self.priority,
            "tenant": self.tenant,
            "idempotency_key": self.idempotency_key,
            "args": dict(self.args),
            "max_attempts": self.max_attempts,
            "timeout_s": self.timeout_s,
            "backoff_s": self.backoff_s,
            "delivery_id": self.delivery_id,
            "attempts": 0,
            "created_at": self.created_at,
            "updated_at": self.created_at,
            "published_at": self.created_at,
        }
        if self.workflow_id is not None:
            row.update(workflow_id=self.workflow_id, step=self.step)
        if self.flow is not None:
            row.update(self.flow.columns(), published_at=None)
        row["state"] = self.initial_state
        return row


@dataclasses.dataclass(frozen=True, slots=True)
class Job:
    """One row of `jobs` as the ledger returned it (every column, in the table's order)."""

    id: uuid.UUID
    type: str
    queue: str
    priority: int
    tenant: str
    idempotency_key: str | None
    args: Any
    result: Any
    error: Any
    state: str
    attempts: int
    max_attempts: int
    timeout_s: float
    backoff_s: float
    delivery_id: uuid.UUID
    created_at: dt.datetime
    updated_at: dt.datetime
    published_at: dt.datetime | None
    started_at: dt.datetime | None
    heartbeat_at: dt.datetime | None
    lease_expires_at: dt.datetime | None
    finished_at: dt.datetime | None
    not_before: dt.datetime | None
    worker: str | None
    worker_pid: int | None
    schedule_id: uuid.UUID | None
    scheduled_for: dt.datetime | None
    workflow_id: uuid.UUID | None
    step: str | None
    cancel_requested_at: dt.datetime | None
    progress: Any
    dispatch: bool
    dispatch_rank: dt.datetime | None
    flow_key: str | None
    flow_limit: int | None
    rate_key: str | None
    rate_interval_s: float | None

    @classmethod
    def of(cls, row: Row[Any]) -> Job:
        """The record of a row that selected every column of `jobs`.

        By position when the row's columns are the table's, in its order (every read and every
        RETURNING of the ledger): a row's mapping view costs several times the record itself,
        and this runs on each write of a job's path."""
        if row._fields == JOB_COLUMNS:
            return cls(*cast(tuple[Any, ...], row))
        return cls(**row._mapping)

    @classmethod
    def maybe(cls, row: Row[Any] | None) -> Job | None:
        return None if row is None else cls.of(row)

    def fields(self) -> dict[str, Any]:
        """Every column by name (shallow: `args` and `result` are the record's own objects)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def replace(self, **changes: Any) -> Job:
        return dataclasses.replace(self, **changes)


JOB_COLUMNS = tuple(f.name for f in dataclasses.fields(Job))
"""`Job`'s fields, which are the columns of `jobs` in the table's order (tests/ledger checks it)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Overdue:
    """A running job past its deadline, as the timeout loop reads it: ids and times, never the
    job's args or result (a batch of them is read on every tick)."""

    id: uuid.UUID
    delivery_id: uuid.UUID
    timeout_s: float
    started_at: dt.datetime
