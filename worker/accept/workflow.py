"""Accepting a workflow: a DAG of jobs, all of it or nothing, for the API and the library alike.

The same steps as `accept()` (worker/accept/flow.py), over the whole DAG before anything is
written: its shape (worker/accept/dag.py), every step's job exactly as `POST /jobs` validates
one, the tenant's quota over every step (each will be queued), room in the queues for the roots
(the steps queued now; the others enter their queue when released, as a retry does). Then ONE
transaction writes the workflow, every step's job and its row (worker/ledger/workflows.py), and
ONE pipeline publishes the roots (the outbox: a refused publish is the reconcile loop's).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import exc as sa_exc

from worker.accept.admission import Reservation, admit_jobs
from worker.accept.commit import Accepted, publish_new
from worker.accept.dag import MAX_STEPS, StepRequest, check_dag
from worker.accept.flow import Caller
from worker.accept.paused import check_not_refused
from worker.accept.quota import check_tenant_quota
from worker.accept.validate import new_job
from worker.clock import utcnow
from worker.errors import (
    CommitUnconfirmedError,
    InvalidArgsError,
    InvalidWorkflowError,
    LedgerUnavailableError,
    MedicError,
)
from worker.ledger import db, queries, workflows
from worker.ledger.records import Job, NewJob
from worker.ledger.workflows import FailurePolicy, NewStep, NewWorkflow
from worker.runtime.queues import DeclaredQueues, declared_queues
from worker.runtime.registry import get_spec
from worker.settings import get_settings

log = logging.getLogger(__name__)

RESULTS_ARG = "results"


@dataclass(frozen=True)
class WorkflowRequest:
    """What a caller asks for: the steps, a name for people, the failure policy."""

    steps: Sequence[StepRequest]
    name: str | None = None
    failure_policy: str = FailurePolicy.FAIL_FAST.value


@dataclass(frozen=True)
class AcceptedWorkflow:
    """A committed workflow: its id and every step's job, in the order they were written (a
    topological order); `published` False: the broker refused a root (reconcile sends it)."""

    id: uuid.UUID
    jobs: list[Job]
    published: bool = True

    def job_of(self, step: str) -> Job:
        return next(job for job in self.jobs if job.step == step)


def accept_workflow(req: WorkflowRequest, caller: Caller) -> AcceptedWorkflow:
    """Validate, admit, commit and publish a workflow. Nothing is written unless all passes.

    Raises:
        InvalidWorkflowError: its shape (names, `after`, a cycle, size) or a policy is wrong.
        UnknownJobTypeError, InvalidArgsError, PayloadTooLargeError, UnknownQueueError,
        ForbiddenError: a step's job is wrong (`step` in the details).
        TenantQuotaError, QueueFullError: refused for load (retry later).
        LedgerUnavailableError: the ledger cannot keep it now (nothing written).
        CommitUnconfirmedError: its COMMIT's answer was lost twice (`workflow_id` in the details).
    """
    new = new_workflow(req, caller)
    roots = [s.job for s in new.steps if not s.after]
    reservations: list[Reservation] = []
    check_not_refused([s.job for s in new.steps])  # a pause is the operator's, not load: for every caller
    if caller.admission:
        check_tenant_quota(caller.tenant, [s.job for s in new.steps])
        reservations = admit_jobs(roots)
    try:
        written = _commit(new, caller.actor)
        root_ids = {r.id for r in roots}
        done = publish_new([Accepted(job, True) for job in written if job.id in root_ids], reservations)
    finally:
        for reservation in reservations:
            reservation.release()
    published = all(a.published for a in done if isinstance(a, Accepted))
    log.info("accepted workflow %s: %d steps, %d roots", new.id, len(new.steps), len(roots),
             extra={"workflow_id": str(new.id), "tenant": caller.tenant})  # fmt: skip
    return AcceptedWorkflow(new.id, written, published)


def _commit(new: NewWorkflow, actor: str) -> list[Job]:
    """The one transaction. A COMMIT whose answer is lost is settled by writing it once more
    (ids are made here): the insert of a workflow id that an unanswered COMMIT did write waits
    for it and then finds it (read back, as written), one that it did not is written now.

    Raises:
        LedgerUnavailableError: nothing was written.
        CommitUnconfirmedError: the settling got no answer either (outcome "unknown": look up
            `workflow_id` before sending it again).
    """
    try:
        return _write(new, actor)
    except _UnconfirmedError as lost:
        log.warning("the ledger did not answer the COMMIT of workflow %s (%s); settling it", new.id, lost.__cause__)
    try:
        return _write(new, actor)
    except sa_exc.IntegrityError:  # the first COMMIT did write it
        with db.connect() as conn:
            return [job for s in new.steps if (job := queries.get_job(conn, s.job.id)) is not None]
    except (_UnconfirmedError, LedgerUnavailableError) as exc:
        raise CommitUnconfirmedError(
            "the ledger did not confirm the workflow's commit; look it up before sending it again",
            outcome="unknown",
            workflow_id=str(new.id),
        ) from exc


class _UnconfirmedError(Exception):
    """The COMMIT was sent and its answer lost: the outcome is unknown."""


def _write(new: NewWorkflow, actor: str) -> list[Job]:
    sent = False
    try:
        with db.begin() as conn:
            written = workflows.create_workflow(conn, new, actor=actor, now=new.created_at)
            sent = True  # what fails from here on is the COMMIT
    except LedgerUnavailableError as exc:
        if sent:
            raise _UnconfirmedError() from exc
        raise
    return written


def new_workflow(req: WorkflowRequest, caller: Caller) -> NewWorkflow:
    """The validated workflow, steps in a topological order (no I/O but the job modules).

    Raises:
        as `accept_workflow`, the load errors aside.
    """
    try:
        policy = FailurePolicy(req.failure_policy)
    except ValueError:
        known = ", ".join(p.value for p in FailurePolicy)
        raise InvalidWorkflowError(f"failure_policy is one of {known}", failure_policy=req.failure_policy) from None
    order = check_dag(req.steps, MAX_STEPS)
    s = get_settings()
    now = utcnow()
    declared = declared_queues(s)
    workflow_id = uuid.uuid4()
    steps: list[NewStep] = []
    for i in order:
        step = req.steps[i]
        job = _step_job(step, caller, now=now, declared=declared)
        steps.append(NewStep(step.name, tuple(step.after), step.wants_results, dataclasses.replace(
            job, workflow_id=workflow_id, step=step.name)))  # fmt: skip
    return NewWorkflow(workflow_id, caller.tenant, req.name, policy, now, tuple(steps))


def _step_job(step: StepRequest, caller: Caller, *, now: dt.datetime, declared: DeclaredQueues) -> NewJob:
    """One step's job, validated as `POST /jobs` validates one; an error names the step.

    A step that asks for results has `results: {}` in its args until it is released (so its
    args are checked with it, and a root that asks for them runs with none)."""
    request = step.job
    try:
        if request.idempotency_key is not None:
            raise InvalidArgsError("a workflow's steps take no idempotency key")
        if RESULTS_ARG in request.args:
            raise InvalidArgsError(f"`{RESULTS_ARG}` is set by the workflow, not by the caller")
        if step.wants_results:
            if RESULTS_ARG not in get_spec(request.type).args_model.model_fields:
                raise InvalidArgsError(f"{request.type} declares no `{RESULTS_ARG}` parameter to take the results in")
            request = dataclasses.replace(request, args={**request.args, RESULTS_ARG: {}})
        return new_job(
            request,
            tenant=caller.tenant,
            s=get_settings(),
            now=now,
            declared=declared,
            allowed_queues=caller.allowed_queues,
        )
    except MedicError as exc:
        details = {k: v for k, v in exc.details.items() if k != "step"}
        raise type(exc)(f"step {step.name!r}: {exc.message}", step=step.name, **details) from None
