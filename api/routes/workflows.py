"""Workflow routes: `POST /workflows` (a DAG of jobs, all or nothing) and `GET /workflows/{id}`.
Scoped to the caller's tenant: another tenant's workflow is a 404."""

from __future__ import annotations

import logging
import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Response

from api import metrics
from api.deps import ReadKey, SubmitKey
from api.routes.jobs import _caller, _request
from api.workflow_schemas import EXAMPLE, WorkflowCreate, WorkflowPublic, WorkflowStepPublic
from worker.accept.dag import StepRequest
from worker.accept.workflow import WorkflowRequest, accept_workflow
from worker.errors import WorkflowNotFoundError
from worker.ledger import db, workflows

router = APIRouter(prefix="/workflows", tags=["workflows"])
log = logging.getLogger(__name__)


def _public(workflow_id: uuid.UUID, tenant: str) -> WorkflowPublic:
    with db.connect() as conn:
        workflow = workflows.get_workflow(conn, workflow_id, tenant)
        if workflow is None:
            raise WorkflowNotFoundError(f"no workflow {workflow_id}")
        steps = workflows.get_steps(conn, workflow_id)
    return WorkflowPublic(
        id=workflow.id,
        name=workflow.name,
        state=workflow.state,
        failure_policy=workflow.failure_policy,
        created_at=workflow.created_at,
        updated_at=workflow.updated_at,
        finished_at=workflow.finished_at,
        steps=[WorkflowStepPublic.model_validate(s, from_attributes=True) for s in steps],
    )


@router.post("", status_code=202, response_model=WorkflowPublic)
def submit_workflow(
    body: Annotated[
        WorkflowCreate, Body(openapi_examples={"fan-in": {"summary": "two steps, then a merge", "value": EXAMPLE}})
    ],
    key: SubmitKey,
    response: Response,
) -> WorkflowPublic:
    """Accept a workflow: 202 once every step is durably written (roots queued, the others
    waiting); nothing is written when any step or the DAG is wrong (422)."""
    steps = [StepRequest(s.name, _request(s, None), tuple(s.after), s.wants_results) for s in body.steps]
    done = accept_workflow(WorkflowRequest(steps, body.name, body.failure_policy), _caller(key))
    for job in done.jobs:
        metrics.JOBS_ACCEPTED.labels(job.type, job.queue).inc()
    response.headers["Location"] = f"/workflows/{done.id}"
    return _public(done.id, key.tenant)


@router.get("/{workflow_id:uuid}", response_model=WorkflowPublic)
def get_workflow(workflow_id: uuid.UUID, key: ReadKey) -> WorkflowPublic:
    """The workflow and every step's name, job_id and state."""
    return _public(workflow_id, key.tenant)
