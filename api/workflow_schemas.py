"""Workflow request and response models: WorkflowCreate in, WorkflowPublic out (docs/workflows.md)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas import NO_NUL, JobCreate

EXAMPLE: dict[str, Any] = {
    "name": "nightly-report",
    "failure_policy": "fail_fast",
    "steps": [
        {"name": "fetch-eu", "type": "examples.echo", "args": {"message": "eu"}},
        {"name": "fetch-us", "type": "examples.echo", "args": {"message": "us"}},
        {"name": "merge", "type": "examples.merge", "after": ["fetch-eu", "fetch-us"], "wants_results": True},
    ],
}


class WorkflowStepCreate(JobCreate):
    """One step: a job as `POST /jobs` takes it, its name, and the steps it waits for."""

    name: str = Field(min_length=1, max_length=200, pattern=NO_NUL, description="Unique in its workflow.")
    after: list[str] = Field(
        default_factory=list,
        max_length=1000,
        description="Names of the steps it waits for (none: a root, run at once).",
    )
    wants_results: bool = Field(
        False,
        description="Give the step an argument `results`: {step name: result} of the steps in `after` that "
        "succeeded. Its function must declare a `results` parameter.",
    )


class WorkflowCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE]})

    name: str | None = Field(None, min_length=1, max_length=200, pattern=NO_NUL, description="For people.")
    failure_policy: Literal["fail_fast", "continue"] = Field(
        "fail_fast",
        description="fail_fast: a step that is dead or cancelled cancels its waiting and queued dependents. "
        "continue: they still run once every step they wait for has ended.",
    )
    steps: list[WorkflowStepCreate] = Field(min_length=1, description="Up to 1,000 steps, a DAG.")


class WorkflowStepPublic(BaseModel):
    name: str
    job_id: uuid.UUID
    type: str
    state: str = Field(description="Its job's state: waiting until every step it waits for has succeeded.")
    after: list[str]
    wants_results: bool
    attempts: int
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None


class WorkflowPublic(BaseModel):
    id: uuid.UUID
    name: str | None = None
    state: str = Field(description="running, then succeeded, failed (a step is dead) or cancelled.")
    failure_policy: str
    created_at: dt.datetime
    updated_at: dt.datetime
    finished_at: dt.datetime | None = None
    steps: list[WorkflowStepPublic]
