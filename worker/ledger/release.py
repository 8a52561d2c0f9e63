"""What the end of a workflow's step does to the rest of its workflow, in the transaction that
ended the step (a worker's finalize), or in the repair loop's when that transaction was not the
one that ended it (a recovery, a timeout, a cancel, or a row broken by hand).

- A step that succeeded counts down `pending` of each step that waits for it; a step reaching 0
  is released: `waiting -> queued` (its event, reason `released`), with `results` added to its
  args when it asked for them. The caller publishes it after the COMMIT (the outbox).
- A step that ended `dead` or `cancelled`: with `fail_fast`, every transitive dependent still
  `waiting` or `queued` is cancelled (reason `workflow_failed`); running ones are left to finish.
  With `continue`, it counts down like a success, so its dependents run once every step they
  wait for has ended; their `results` hold only the steps that succeeded.
- Once every step is terminal the workflow is finished: `failed` if a step is dead, else
  `cancelled` if one is cancelled, else `succeeded`.

The workflow's row is locked first (workflows.lock), so the ends of two steps of one workflow run
one after the other: the second sees the first's countdown, and a release cannot be missed.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from worker.ledger import transitions
from worker.ledger.models import jobs, workflow_steps
from worker.ledger.records import Job
from worker.ledger.states import TERMINAL_STATES, JobState
from worker.ledger.workflows import FailurePolicy, Step, Workflow, WorkflowState, finish, get_steps, lock

log = logging.getLogger(__name__)

RELEASED = "released"
WORKFLOW_FAILED = "workflow_failed"
_ENDED = frozenset(s.value for s in TERMINAL_STATES)
_FAILED = frozenset({JobState.DEAD.value, JobState.CANCELLED.value})


def step_ended(conn: Connection, job: Job, *, actor: str, now: dt.datetime) -> list[Job]:
    """`job`, a step, has just ended (in this transaction): count down, release or cancel its
    dependents, and finish the workflow if that was its last step. Returns the jobs changed."""
    if job.workflow_id is None or job.step is None or job.state not in _ENDED:
        return []
    workflow = lock(conn, job.workflow_id, now=now)
    if workflow is None:
        return []
    steps = {s.name: s for s in get_steps(conn, workflow.id)}
    if job.state == JobState.SUCCEEDED.value or workflow.failure_policy == FailurePolicy.CONTINUE.value:
        changed = _count_down(conn, workflow, steps, job.step, actor=actor, now=now)
    else:
        changed = _cancel_dependents(conn, steps, job.step, actor=actor, now=now)
    finish_if_done(conn, workflow, now=now)
    return changed


def follow(conn: Connection, ended: Iterable[Job | None], *, actor: str, now: dt.datetime) -> list[Job]:
    """`step_ended` for every workflow step among `ended` (rows a transition of this transaction
    returned) that has ended for good: the follow-up in the same transaction, whoever ended it (a
    loop that gave up on it, a cancel), so no release or fail-fast waits for the repair loop."""
    changed: list[Job] = []
    for job in ended:
        if job is not None and job.workflow_id is not None:
            changed += step_ended(conn, job, actor=actor, now=now)
    return changed


def cancel(
    conn: Connection, job_id: uuid.UUID, tenant: str, *, actor: str, now: dt.datetime
) -> tuple[tuple[JobState, Job] | None, list[Job]]:
    """`transitions.cancel`, and when that ended a workflow's step at once (waiting or queued),
    its follow-up in the same transaction: (what cancel returned, the dependents it changed; the
    queued ones are the caller's to publish after the COMMIT). A running step is only asked to
    stop; its follow-up comes with the `stopped` write."""
    done = transitions.cancel(conn, job_id, tenant, actor=actor, now=now)
    if done is None or done[0] == JobState.RUNNING:
        return done, []
    return done, follow(conn, [done[1]], actor=actor, now=now)


def _dependents(steps: dict[str, Step], name: str) -> list[str]:
    return [s.name for s in steps.values() if name in s.after]


def _count_down(
    conn: Connection, workflow: Workflow, steps: dict[str, Step], ended: str, *, actor: str, now: dt.datetime
) -> list[Job]:
    names = _dependents(steps, ended)
    if not names:
        return []
    counted = conn.execute(
        sa.update(workflow_steps)
        .where(
            workflow_steps.c.workflow_id == workflow.id,
            workflow_steps.c.name.in_(names),
            workflow_steps.c.pending > 0,
        )
        .values(pending=workflow_steps.c.pending - 1)
        .returning(workflow_steps.c.name, workflow_steps.c.pending)
    ).all()
    ready = sorted(name for name, pending in counted if pending == 0)
    return [job for name in ready if (job := release(conn, steps, steps[name], actor=actor, now=now)) is not None]


def release(conn: Connection, steps: dict[str, Step], step: Step, *, actor: str, now: dt.datetime) -> Job | None:
    """`waiting -> queued` for `step`, its `results` added first if it asked for them (None: it
    was not waiting: released already, or cancelled)."""
    dispatched = bool(conn.execute(sa.select(jobs.c.dispatch).where(jobs.c.id == step.job_id)).scalar())
    values: dict[str, Any] = {"published_at": None if dispatched else now}
    if step.wants_results:
        args = conn.execute(sa.select(jobs.c.args).where(jobs.c.id == step.job_id)).scalar_one()
        values["args"] = {**dict(args or {}), "results": results_of(conn, [steps[n] for n in step.after])}
    return transitions.transition(
        conn,
        step.job_id,
        JobState.WAITING,
        JobState.HELD if dispatched else JobState.QUEUED,  # a job the dispatcher starts waits its turn
        actor=actor,
        reason=RELEASED,
        now=now,
        values=values,
        detail=f"every step it waits for has ended: {', '.join(step.after)}"[:500],
    )


def results_of(conn: Connection, predecessors: Iterable[Step]) -> dict[str, Any]:
    """`{step name: result}` of the predecessors that succeeded (read now: in the transaction
    that releases, after the last of them committed or in this very transaction)."""
    by_id = {s.job_id: s.name for s in predecessors}
    if not by_id:
        return {}
    rows = conn.execute(
        sa.select(jobs.c.id, jobs.c.result).where(jobs.c.id.in_(list(by_id)), jobs.c.state == JobState.SUCCEEDED.value)
    )
    return {by_id[job_id]: result for job_id, result in sorted(rows, key=lambda r: by_id[r[0]])}


def _cancel_dependents(
    conn: Connection, steps: dict[str, Step], ended: str, *, actor: str, now: dt.datetime
) -> list[Job]:
    """Cancel every transitive dependent of `ended` still waiting or queued. Running ones are
    not touched here (a running job's cancel is a request its worker reads)."""
    cancelled: list[Job] = []
    for name in transitive_dependents(steps, ended):
        step = steps[name]
        for frm in (JobState.WAITING, JobState.HELD, JobState.QUEUED):
            job = transitions.transition(
                conn,
                step.job_id,
                frm,
                JobState.CANCELLED,
                actor=actor,
                reason=WORKFLOW_FAILED,
                now=now,
                values={"finished_at": now, "lease_expires_at": None},
                detail=f"step {ended!r} did not succeed"[:500],
            )
            if job is not None:
                cancelled.append(job)
                break
    return cancelled


def transitive_dependents(steps: dict[str, Step], name: str) -> list[str]:
    """Every step that waits for `name`, directly or not, in a breadth-first order."""
    seen: list[str] = []
    frontier = [name]
    while frontier:
        nxt = [d for n in frontier for d in _dependents(steps, n) if d not in seen]
        nxt = list(dict.fromkeys(nxt))
        seen.extend(nxt)
        frontier = nxt
    return seen


def finish_if_done(conn: Connection, workflow: Workflow, *, now: dt.datetime) -> WorkflowState | None:
    """Finish the workflow when every one of its steps is terminal; returns the state it took."""
    rows = conn.execute(
        sa.select(jobs.c.state, sa.func.count())
        .where(jobs.c.tenant == workflow.tenant, jobs.c.workflow_id == workflow.id)
        .group_by(jobs.c.state)
    ).all()
    counts = {state: int(n) for state, n in rows}
    if any(state not in _ENDED for state in counts):
        return None
    if counts.get(JobState.DEAD.value):
        state = WorkflowState.FAILED
    elif counts.get(JobState.CANCELLED.value):
        state = WorkflowState.CANCELLED
    else:
        state = WorkflowState.SUCCEEDED
    if not finish(conn, workflow.id, state, now=now):
        return None
    log.info("workflow %s %s", workflow.id, state.value, extra={"workflow_id": str(workflow.id)})
    return state


def repair(conn: Connection, *, workflow_id: uuid.UUID, actor: str, now: dt.datetime) -> list[Job]:
    """Bring one running workflow in line with its steps' states, from the truth (the jobs'
    states), not from `pending`: release every waiting step whose predecessors have all ended as
    its release needs, cancel (fail_fast) the waiting/queued dependents of a step that did not
    succeed, and finish it when every step is terminal. Returns the jobs changed."""
    workflow = lock(conn, workflow_id, now=now)
    if workflow is None or workflow.state != WorkflowState.RUNNING.value:
        return []
    steps = {s.name: s for s in get_steps(conn, workflow.id)}
    changed: list[Job] = []
    fail_fast = workflow.failure_policy == FailurePolicy.FAIL_FAST.value
    if fail_fast:
        for step in steps.values():
            if step.state in _FAILED:
                changed += _cancel_dependents(conn, steps, step.name, actor=actor, now=now)
        cancelled = {job.step for job in changed}
        steps = {n: s for n, s in steps.items() if n not in cancelled}
    for step in steps.values():
        if step.state != JobState.WAITING.value or not _may_run(steps, step, fail_fast=fail_fast):
            continue
        conn.execute(
            sa.update(workflow_steps)
            .where(workflow_steps.c.workflow_id == workflow.id, workflow_steps.c.name == step.name)
            .values(pending=0)
        )
        job = release(conn, steps, step, actor=actor, now=now)
        if job is not None:
            changed.append(job)
    finish_if_done(conn, workflow, now=now)
    return changed


def _may_run(steps: dict[str, Step], step: Step, *, fail_fast: bool) -> bool:
    states = [steps[n].state if n in steps else JobState.CANCELLED.value for n in step.after]
    if fail_fast:
        return all(s == JobState.SUCCEEDED.value for s in states)
    return all(s in _ENDED for s in states)
