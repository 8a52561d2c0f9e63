"""Request and response models: JobCreate / BatchCreate in, JobPublic / JobsPublic out, ErrorPublic
for every error (its `error` code is stable; see docs/api.md)."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

NO_NUL = r"^[^\x00]*$"  # PostgreSQL refuses NUL in text: a 422 here, not a 500 at the insert


def _iso_time_only(value: Any) -> Any:
    """A time filter is ISO 8601 text, as documented: pydantic would also read a number (or a
    numeric string) as Unix seconds, which the schema does not promise."""
    if isinstance(value, bool | int | float) or (isinstance(value, str) and re.fullmatch(r"[\d.eE+-]+", value)):
        raise ValueError("a time in ISO 8601, such as 2026-12-06T04:00:00Z")
    return value


IsoTime = Annotated[dt.datetime, BeforeValidator(_iso_time_only)]


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str = Field(
        min_length=1, max_length=200, pattern=NO_NUL, description="A registered job type, e.g. examples.echo."
    )
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the job function.")
    queue: str | None = Field(
        None, min_length=1, max_length=200, pattern=NO_NUL, description="Overrides the job type's queue."
    )
    priority: int = Field(0, ge=0, le=9, description="0..9, higher is served first.")
    timeout: float | None = Field(None, gt=0, le=86400, description="Seconds before the job is timed out.")
    max_attempts: int | None = Field(None, ge=1, le=100)


class BatchItem(JobCreate):
    idempotency_key: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        pattern=NO_NUL,
        description="Single jobs use the Idempotency-Key header instead.",
    )


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jobs: list[BatchItem] = Field(min_length=1)


class ErrorPublic(BaseModel):
    """Every error: a stable code, a sentence for people, and details that depend on the code."""

    model_config = ConfigDict(extra="allow")

    error: str = Field(description="Stable machine-readable code, e.g. invalid_args, queue_full, job_not_found.")
    message: str


class JobPublic(BaseModel):
    id: uuid.UUID
    type: str
    queue: str
    priority: int
    state: str
    attempts: int
    max_attempts: int
    timeout_s: float
    args: dict[str, Any]
    result: Any = None
    error: dict[str, Any] | None = None
    idempotency_key: str | None = None
    created_at: dt.datetime
    published_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    heartbeat_at: dt.datetime | None = None
    lease_expires_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    not_before: dt.datetime | None = None
    worker: str | None = None
    worker_pid: int | None = None
    schedule_id: uuid.UUID | None = Field(None, description="The schedule that fired this job.")
    scheduled_for: dt.datetime | None = Field(None, description="The fire time this job is for.")
    workflow_id: uuid.UUID | None = Field(None, description="The workflow this job is a step of.")
    step: str | None = Field(None, description="Its step's name in that workflow.")
    cancel_requested_at: dt.datetime | None = Field(
        None, description="When a cancel of this running job was asked; its worker stops it within the grace."
    )
    progress: dict[str, Any] | None = Field(
        None, description='The latest progress it reported: {"fraction": 0.4, "message": "...", "at": "..."}.'
    )

    @classmethod
    def of(cls, job: Any, *, published: bool = True) -> JobPublic:
        public = cls.model_validate(job, from_attributes=True)
        if not published:
            public.published_at = None
        return public


LIST_FIELDS = ("args", "result")
"""What a list leaves out unless `fields=` asks for it: each is up to its cap (64 KiB by default),
so 500 of them cost a page hundreds of MB in the API process for data a list rarely needs."""


class JobSummary(JobPublic):
    """A job in a list: every field of `JobPublic`, but `args` and `result` only when asked
    (`GET /jobs?fields=args,result`); a field left out is absent, not null."""

    args: dict[str, Any] | None = Field(None, description="Only with fields=args.")  # type: ignore[assignment]
    result: Any = Field(None, description="Only with fields=result.")

    @classmethod
    def listed(cls, job: Any, fields: frozenset[str]) -> JobSummary:
        """The summary of `job` with only the `fields` of LIST_FIELDS that were asked for."""
        values = {name: getattr(job, name) for name in cls.model_fields if name not in LIST_FIELDS or name in fields}
        return cls.model_validate(values)


class JobsPublic(BaseModel):
    jobs: list[JobSummary]
    next_cursor: str | None = Field(None, description="Pass as ?cursor= for the next (older) page.")


class BatchPublic(BaseModel):
    jobs: list[JobPublic]


class EventPublic(BaseModel):
    at: dt.datetime
    from_state: str | None
    to_state: str
    actor: str
    reason: str
    delivery_id: uuid.UUID | None
    attempt: int
    detail: str | None = None


class EventsPublic(BaseModel):
    job_id: uuid.UUID
    events: list[EventPublic]


class BulkFilter(BaseModel):
    """The fields both bulk routes take: every field given must match."""

    model_config = ConfigDict(extra="forbid")

    type: str | None = Field(None, min_length=1, max_length=200, pattern=NO_NUL)
    queue: str | None = Field(None, min_length=1, max_length=200, pattern=NO_NUL)
    schedule_id: uuid.UUID | None = Field(None, description="Jobs fired by this schedule.")
    workflow_id: uuid.UUID | None = Field(None, description="Steps of this workflow.")
    created_after: IsoTime | None = Field(None, description="Jobs created at or after this time.")
    created_before: IsoTime | None = Field(None, description="Jobs created before this time.")
    args_contains: str | None = Field(
        None, min_length=1, max_length=200, pattern=NO_NUL, description="Text the job's args contain (any case)."
    )
    tenant: str | None = Field(
        None, min_length=1, max_length=100, description="Another tenant's jobs (admin keys only)."
    )


class CancelFilter(BulkFilter):
    """Which of the caller's jobs `POST /jobs/cancel` cancels: every field given must match, and
    at least one is given (an empty filter would cancel everything)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"type": "examples.sleep", "state": "queued"}, {"queue": "reports"}]},
    )

    state: Literal["held", "queued", "running"] | None = Field(
        None,
        description="Only held or queued (cancelled at once) or only running (asked to stop) jobs; all if absent.",
    )

    @model_validator(mode="after")
    def _not_empty(self) -> CancelFilter:
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise ValueError("give at least one of state, type, queue, schedule_id, workflow_id")
        return self


class BulkCancelPublic(BaseModel):
    """What one bulk cancel did; each job it touched has its own event (actor: the API key)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "cancelled": 2,
                    "requested": 1,
                    "job_ids": ["6f0c1a0e-8f1b-4c4e-9a57-0d2b1d3c9e11"],
                    "more": False,
                    "limit": 1000,
                }
            ]
        }
    )

    cancelled: int = Field(description="Queued jobs cancelled at once.")
    requested: int = Field(description="Running jobs asked to stop (each ends `cancelled` within the grace).")
    job_ids: list[uuid.UUID] = Field(description="Every job this call cancelled or asked to stop.")
    more: bool = Field(description="More jobs match than one call acts on: call again.")
    limit: int = Field(description="The most jobs one call acts on (MEDIC_MAX_BULK_CANCEL).")


class RetryFilter(BulkFilter):
    """Which of the caller's dead jobs `POST /jobs/retry` runs again: every field given must
    match; none given: every dead job (a request acts on at most MEDIC_MAX_BULK_CANCEL)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"type": "examples.flaky"}]})


class BulkRetryPublic(BaseModel):
    """What one bulk retry did; each job it requeued has its own event `manual_retry`."""

    retried: int = Field(description="Dead jobs queued again, with a fresh set of attempts.")
    job_ids: list[uuid.UUID] = Field(description="Every job this call requeued.")
    more: bool = Field(description="More dead jobs match than one call acts on: call again.")
    limit: int = Field(description="The most jobs one call acts on (MEDIC_MAX_BULK_CANCEL).")


class QueuePause(BaseModel):
    """POST /queues/{queue}/pause: what admission does while the queue is paused."""

    model_config = ConfigDict(extra="forbid")

    admission: Literal["accept", "refuse"] = Field(
        "accept",
        description='"accept": jobs are still accepted and wait `held`; "refuse": 429 queue_paused, nothing written.',
    )


class QueueControlPublic(BaseModel):
    """A queue's pause state after a pause or resume."""

    queue: str
    paused: bool
    admission: Literal["accept", "refuse"] | None = Field(description="While paused; null when not paused.")
    paused_at: dt.datetime | None = None
    paused_by: str | None = Field(None, description="The actor that paused it (api:<key id>, cli:<user>).")
    changed: bool = Field(description="This call changed the state (false: it was already so; nothing written).")
    dispatched: int = Field(0, description="Resume only: held jobs dispatched at once (the loop sends the rest).")
