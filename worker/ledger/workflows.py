"""Workflows in the ledger: a DAG of jobs written in ONE transaction, and read back.

A workflow is a row of `workflows`, one job per step (`jobs.workflow_id`, `jobs.step`) and one
`workflow_steps` row per step: the names it waits for (`after`) and how many of those have not
ended yet the way its release needs (`pending`). Roots are written `queued`, every other step
`waiting` and unpublished; what a step's end does to the others is worker/ledger/release.py.

Not the hot path: the rows go in with plain inserts on both dialects (one executemany each).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import uuid
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from worker.ledger import events
from worker.ledger.events import Event
from worker.ledger.models import jobs, workflow_steps, workflows
from worker.ledger.records import Job, NewJob
from worker.ledger.states import JobState


class WorkflowState(StrEnum):
    RUNNING = "running"  # some step is not terminal yet
    SUCCEEDED = "succeeded"  # every step succeeded
    FAILED = "failed"  # every step is terminal and at least one is dead
    CANCELLED = "cancelled"  # every step is terminal, none dead, at least one cancelled


class FailurePolicy(StrEnum):
    FAIL_FAST = "fail_fast"  # a dead or cancelled step cancels its waiting/queued dependents
    CONTINUE = "continue"  # its dependents still run once every step they wait for has ended


@dataclasses.dataclass(frozen=True, slots=True)
class NewStep:
    """One validated step: its job (with workflow_id and step set) and the names it waits for."""

    name: str
    after: tuple[str, ...]
    wants_results: bool
    job: NewJob


@dataclasses.dataclass(frozen=True, slots=True)
class NewWorkflow:
    """A validated DAG, ready to write: its steps in a topological order."""

    id: uuid.UUID
    tenant: str
    name: str | None
    failure_policy: FailurePolicy
    created_at: dt.datetime
    steps: tuple[NewStep, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Workflow:
    """One row of `workflows`."""

    id: uuid.UUID
    tenant: str
    name: str | None
    failure_policy: str
    state: str
    steps: int
    created_at: dt.datetime
    updated_at: dt.datetime
    finished_at: dt.datetime | None

    @classmethod
    def of(cls, row: Row[Any]) -> Workflow:
        return cls(**row._mapping)


@dataclasses.dataclass(frozen=True, slots=True)
class Step:
    """One step as its workflow sees it: the `workflow_steps` row and its job's state and times."""

    name: str
    job_id: uuid.UUID
    after: list[str]
    pending: int
    wants_results: bool
    state: str
    type: str
    attempts: int
    started_at: dt.datetime | None
    finished_at: dt.datetime | None


def create_workflow(conn: Connection, new: NewWorkflow, *, actor: str, now: dt.datetime) -> list[Job]:
    """Write the workflow, every step's job (roots `queued`, the others `waiting` with no
    `published_at`: nothing is sent for them) with its creation event, and the steps' rows, in
    the caller's transaction. Returns the jobs in `new.steps`' order."""
    conn.execute(
        workflows.insert().values(
            id=new.id,
            tenant=new.tenant,
            name=new.name,
            failure_policy=new.failure_policy.value,
            state=WorkflowState.RUNNING.value,
            steps=len(new.steps),
            created_at=now,
            updated_at=now,
        )
    )
    rows = [_job_row(step) for step in new.steps]
    inserted = [Job.of(r) for r in conn.execute(jobs.insert().returning(*jobs.c, sort_by_parameter_order=True), rows)]
    roots = [job for job in inserted if job.state != JobState.WAITING.value]  # queued, or held
    waiting = [job for job in inserted if job.state == JobState.WAITING.value]
    if roots:
        conn.execute(*events.created(actor, now).insert_for(roots))
    if waiting:
        conn.execute(*Event(JobState.WAITING.value, "enqueued", actor=actor, at=now).insert_for(waiting))
    conn.execute(
        workflow_steps.insert(),
        [
            {
                "workflow_id": new.id,
                "name": step.name,
                "job_id": step.job.id,
                "after": list(step.after),
                "pending": len(step.after),
                "wants_results": step.wants_results,
            }
            for step in new.steps
        ],
    )
    return inserted


def _job_row(step: NewStep) -> dict[str, Any]:
    row = step.job.row()
    if step.after:
        return dict(row, state=JobState.WAITING.value, published_at=None)
    return row


def get_workflow(conn: Connection, workflow_id: uuid.UUID, tenant: str | None = None) -> Workflow | None:
    stmt = sa.select(workflows).where(workflows.c.id == workflow_id)
    if tenant is not None:
        stmt = stmt.where(workflows.c.tenant == tenant)
    row = conn.execute(stmt).first()
    return None if row is None else Workflow.of(row)


def get_steps(conn: Connection, workflow_id: uuid.UUID) -> list[Step]:
    """Every step with its job's state, in a topological order."""
    stmt = (
        sa.select(
            workflow_steps.c.name,
            workflow_steps.c.job_id,
            workflow_steps.c.after,
            workflow_steps.c.pending,
            workflow_steps.c.wants_results,
            jobs.c.state,
            jobs.c.type,
            jobs.c.attempts,
            jobs.c.started_at,
            jobs.c.finished_at,
        )
        .join(jobs, jobs.c.id == workflow_steps.c.job_id)
        .where(workflow_steps.c.workflow_id == workflow_id)
        .order_by(workflow_steps.c.name)
    )
    return topological([Step(**r._mapping) for r in conn.execute(stmt)])


def topological(steps: Sequence[Step]) -> list[Step]:
    """`steps` with every step after the steps it waits for, ties in `steps`' order (Kahn's,
    O(steps + edges)): the rows share one `created_at`, so the ledger holds no order to read."""
    by_name = {s.name: s for s in steps}
    waiting = {s.name: sum(a in by_name for a in s.after) for s in steps}
    dependents: dict[str, list[str]] = {s.name: [] for s in steps}
    for step in steps:
        for name in step.after:
            if name in dependents:
                dependents[name].append(step.name)
    ready = collections.deque(s.name for s in steps if waiting[s.name] == 0)
    order: list[Step] = []
    while ready:
        name = ready.popleft()
        order.append(by_name[name])
        for d in dependents[name]:
            waiting[d] -= 1
            if waiting[d] == 0:
                ready.append(d)
    placed = {s.name for s in order}
    return order + [s for s in steps if s.name not in placed]  # a cycle edited in by hand: as they are


def lock(conn: Connection, workflow_id: uuid.UUID, *, now: dt.datetime) -> Workflow | None:
    """Touch the workflow's row, which holds its row lock to the end of the transaction: every
    step end and every repair of one workflow runs one after the other, so two last steps
    finishing at once cannot both miss the other's success (and on SQLite the write lock is
    taken by the first write anyway)."""
    stmt = sa.update(workflows).where(workflows.c.id == workflow_id).values(updated_at=now).returning(*workflows.c)
    row = conn.execute(stmt).first()
    return None if row is None else Workflow.of(row)


def finish(conn: Connection, workflow_id: uuid.UUID, state: WorkflowState, *, now: dt.datetime) -> bool:
    """running -> `state`, once: False when it was already finished."""
    done = conn.execute(
        sa.update(workflows)
        .where(workflows.c.id == workflow_id, workflows.c.state == WorkflowState.RUNNING.value)
        .values(state=state.value, finished_at=now, updated_at=now)
    )
    return bool(done.rowcount)


def running_oldest_first(conn: Connection, limit: int) -> list[uuid.UUID]:
    """Running workflows, least recently touched first (index (state, updated_at)): the repair
    loop's round robin, since each visit touches the row."""
    stmt = (
        sa.select(workflows.c.id)
        .where(workflows.c.state == WorkflowState.RUNNING.value)
        .order_by(workflows.c.updated_at)
        .limit(limit)
    )
    return [r[0] for r in conn.execute(stmt)]


_FINISHED = [s.value for s in WorkflowState if s is not WorkflowState.RUNNING]


def prune_finished_before(conn: Connection, cutoff: dt.datetime, limit: int) -> int:
    """Delete up to `limit` workflows finished (and last touched: a finished workflow's row is
    touched by a late step end too) before `cutoff`, and their step rows (retention; their jobs go
    by the jobs' own retention). Returns how many workflows went."""
    finished = (
        sa.select(workflows.c.id)
        .where(workflows.c.state.in_(_FINISHED), workflows.c.updated_at < cutoff)  # index (state, updated_at)
        .limit(limit)
    )
    ids = [r[0] for r in conn.execute(finished)]
    if not ids:
        return 0
    conn.execute(sa.delete(workflow_steps).where(workflow_steps.c.workflow_id.in_(ids)))
    return int(conn.execute(sa.delete(workflows).where(workflows.c.id.in_(ids))).rowcount or 0)


def list_recent(conn: Connection, tenant: str, *, limit: int) -> list[Workflow]:
    """A tenant's workflows, newest first (index (tenant, created_at, id))."""
    stmt = (
        sa.select(workflows)
        .where(workflows.c.tenant == tenant)
        .order_by(workflows.c.created_at.desc(), workflows.c.id.desc())
        .limit(limit)
    )
    return [Workflow.of(row) for row in conn.execute(stmt)]
