"""Job routes. Every query is scoped to the caller's tenant: another tenant's job is a 404."""

from __future__ import annotations

import base64
import datetime as dt
import logging
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response

from api import bulk, metrics
from api.deps import AdminKey, ReadKey, SubmitKey, tenant_for
from api.schemas import (
    LIST_FIELDS,
    BatchCreate,
    BatchItem,
    BatchPublic,
    BulkCancelPublic,
    BulkRetryPublic,
    CancelFilter,
    EventPublic,
    EventsPublic,
    IsoTime,
    JobCreate,
    JobPublic,
    JobsPublic,
    JobSummary,
    RetryFilter,
)
from worker import logs
from worker.accept import Accepted, Caller, JobRequest, accept
from worker.broker.publish import announce_cancel, commit_then_publish, publish_and_follow
from worker.clock import utcnow
from worker.errors import InvalidArgsError, InvalidTransitionError, JobNotFoundError
from worker.ledger import db, queries, release, transitions
from worker.ledger.apikeys import ApiKey
from worker.ledger.queries import JobFilter
from worker.ledger.records import Job
from worker.ledger.states import JobState
from worker.settings import get_settings

router = APIRouter(prefix="/jobs", tags=["jobs"])
log = logging.getLogger(__name__)


def _log_job(what: str, job: Job) -> None:
    """One line per job the API changes, with the job's fields (worker/logs.py): `grep <job id>`
    over API and worker logs follows the job."""
    log.info("%s job %s (%s)", what, job.id, job.type, extra=logs.job_extra(job))


def _request(body: JobCreate, idempotency_key: str | None) -> JobRequest:
    """A batch item may carry its own idempotency key; a single job takes the header."""
    item_key = body.idempotency_key if isinstance(body, BatchItem) else None
    return JobRequest(
        type=body.type,
        args=body.args,
        queue=body.queue,
        priority=body.priority,
        timeout=body.timeout,
        max_attempts=body.max_attempts,
        idempotency_key=idempotency_key if idempotency_key is not None else item_key,
    )


def _caller(key: ApiKey) -> Caller:
    return Caller(tenant=key.tenant, actor=f"api:{key.id}", allowed_queues=key.queues)


def _count_accepted(done: list[Accepted]) -> None:
    for accepted in done:
        if accepted.created:
            metrics.JOBS_ACCEPTED.labels(accepted.job.type, accepted.job.queue).inc()


@router.post("", status_code=202, response_model=JobPublic, responses={200: {"description": "Idempotent replay"}})
def submit_job(
    body: JobCreate,
    key: SubmitKey,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobPublic:
    """Accept a job: 202 once it is durably queued (even if the broker is down: it is published later)."""
    [done] = accept([_request(body, idempotency_key)], _caller(key), group=True)
    _count_accepted([done])
    if not done.created:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/jobs/{done.job.id}"
    return JobPublic.of(done.job, published=done.published)


@router.post("/batch", status_code=202, response_model=BatchPublic)
def submit_batch(body: BatchCreate, key: SubmitKey) -> BatchPublic:
    """Accept many jobs in one transaction; all or none are written."""
    limit = get_settings().max_batch_size
    if len(body.jobs) > limit:
        raise InvalidArgsError(f"a batch holds at most {limit} jobs", limit=limit)
    done = accept([_request(j, None) for j in body.jobs], _caller(key))
    _count_accepted(done)
    return BatchPublic(jobs=[JobPublic.of(d.job, published=d.published) for d in done])


def _encode_cursor(created_at: dt.datetime, job_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{job_id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[dt.datetime, uuid.UUID]:
    try:
        stamp, job_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        created_at = dt.datetime.fromisoformat(stamp)
        if created_at.tzinfo is None:  # ours always carry their zone; the ledger refuses naive times
            raise ValueError("naive timestamp")
        return created_at, uuid.UUID(job_id)
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgsError("invalid cursor: pass back a next_cursor exactly as it was returned") from None


FULL_PAGE_MAX = 50
"""The largest `limit` of a page that carries args or results: each may be up to its cap (64 KiB
by default), decoded into Python objects several times its size, so 500 of them cost the API
process hundreds of MB (docs/api.md, "Listing jobs")."""


def _list_fields(fields: str | None, limit: int) -> frozenset[str]:
    """`fields=args,result`: which of LIST_FIELDS a list should carry (none unless asked).

    Raises:
        InvalidArgsError: a name that is not one of LIST_FIELDS, or a `limit` over FULL_PAGE_MAX
            with any of them.
    """
    asked = frozenset(f.strip() for f in (fields or "").split(",") if f.strip())
    unknown = sorted(asked - set(LIST_FIELDS))
    if unknown:
        raise InvalidArgsError(
            f"unknown fields {', '.join(map(repr, unknown))}: fields= takes {', '.join(LIST_FIELDS)}",
            fields=unknown,
        )
    if asked and limit > FULL_PAGE_MAX:
        raise InvalidArgsError(
            f"with fields={','.join(sorted(asked))} a page holds at most {FULL_PAGE_MAX} jobs (limit={limit})",
            limit=FULL_PAGE_MAX,
        )
    return asked


ARGS_CONTAINS = Query(
    max_length=200,
    description="Only jobs whose args contain this text, any case (checked on the rows the "
    "other filters reach: narrow it with a time range on a large ledger).",
)


@router.get("", response_model=JobsPublic, response_model_exclude_unset=True)
def list_jobs(
    key: ReadKey,
    state: JobState | None = None,
    type: str | None = None,
    queue: str | None = None,
    workflow_id: Annotated[uuid.UUID | None, Query(description="Only the steps of this workflow.")] = None,
    schedule_id: Annotated[uuid.UUID | None, Query(description="Only the jobs this schedule fired.")] = None,
    created_after: Annotated[IsoTime | None, Query(description="Created at or after (ISO 8601).")] = None,
    created_before: Annotated[IsoTime | None, Query(description="Created before (ISO 8601).")] = None,
    args_contains: Annotated[str | None, ARGS_CONTAINS] = None,
    tenant: Annotated[str | None, Query(max_length=100, description="Another tenant's jobs (admin keys only).")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
    fields: Annotated[
        str | None, Query(max_length=100, description="Comma-separated: args, result (left out unless asked).")
    ] = None,
) -> Response:
    """The caller's jobs, newest first, keyset-paginated; `args` and `result` only with `fields=`."""
    wanted = _list_fields(fields, limit)
    match = JobFilter(
        tenant_for(key, tenant), state.value if state else None, type, queue, schedule_id, workflow_id,
        aware(created_after), aware(created_before), args_contains or None,
    )  # fmt: skip
    page = jobs_page(match, limit=limit, cursor=cursor, payloads=wanted)
    body = JobsPublic(jobs=[JobSummary.listed(r, wanted) for r in page.jobs], next_cursor=page.next_cursor)
    # Serialized here, once: FastAPI's response_model path would dump, re-validate and encode
    # the page again (three copies of every args object asked for).
    return Response(body.model_dump_json(exclude_unset=True), media_type="application/json")


def aware(stamp: dt.datetime | None) -> dt.datetime | None:
    """A time filter in UTC: one given without a zone is read as UTC (the ledger refuses naive times)."""
    if stamp is None or stamp.tzinfo is not None:
        return stamp
    return stamp.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class JobsPage:
    jobs: list[Job]
    next_cursor: str | None


def jobs_page(match: JobFilter, *, limit: int, cursor: str | None, payloads: frozenset[str]) -> JobsPage:
    """One keyset page of the jobs `match` covers: the API's list and the console's jobs page."""
    before = _decode_cursor(cursor) if cursor else None
    with db.connect() as conn:
        rows = queries.page(conn, match, limit=limit, before=before, payloads=payloads)
    next_cursor = _encode_cursor(rows[-1].created_at, rows[-1].id) if len(rows) == limit else None
    return JobsPage(rows, next_cursor)


def _owned(job_id: uuid.UUID, tenant: str) -> Job:
    with db.connect() as conn:
        row = queries.get_job(conn, job_id, tenant)
    if row is None:
        raise JobNotFoundError(f"no job {job_id}")
    return row


@router.get("/{job_id:uuid}", response_model=JobPublic)
def get_job(job_id: uuid.UUID, key: ReadKey) -> JobPublic:
    return JobPublic.of(_owned(job_id, key.tenant))


@router.get("/{job_id:uuid}/events", response_model=EventsPublic)
def get_events(job_id: uuid.UUID, key: ReadKey) -> EventsPublic:
    """Every state change of the job: who moved it, when, and why."""
    _owned(job_id, key.tenant)
    with db.connect() as conn:
        events = queries.get_events(conn, job_id)
    return EventsPublic(job_id=job_id, events=[EventPublic.model_validate(e._asdict()) for e in events])


_CANCEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The job was queued: it is `cancelled` now."},
    202: {
        "model": JobPublic,
        "description": "The job is running: its cancel is requested (`cancel_requested_at`); its worker learns "
        "it within a heartbeat and it ends `cancelled` (reason `stopped`) within the grace.",
        "content": {
            "application/json": {"example": {"state": "running", "cancel_requested_at": "2026-12-05T12:00:00Z"}}
        },
    },
    409: {"description": "The job is finished: nothing to cancel."},
}


@router.post("/{job_id:uuid}/cancel", response_model=JobPublic, responses=_CANCEL_RESPONSES)
def cancel_job(job_id: uuid.UUID, key: SubmitKey, response: Response) -> JobPublic:
    """Cancel a queued job at once (200); ask a running one to stop (202): a durable request its
    worker reads from the ledger at each heartbeat, whether or not the broadcast reaches it."""
    with db.begin() as conn:
        done, followed = release.cancel(conn, job_id, key.tenant, actor=f"api:{key.id}", now=utcnow())
    # a `continue` workflow's released steps; the cancelled job's slot, if the dispatcher started it
    publish_and_follow([*followed, done[1] if done is not None else None])
    if done is None:
        row = _owned(job_id, key.tenant)
        raise InvalidTransitionError(f"a {row.state} job cannot be cancelled", state=row.state)
    left, row = done
    if left == JobState.RUNNING:
        response.status_code = 202
        _announce([row])
    _log_job("cancel requested of" if left == JobState.RUNNING else f"cancelled ({left})", row)
    return JobPublic.of(row)


def _announce(rows: list[Job]) -> None:
    """The fast path: wake the workers of these running jobs (the ledger already holds the request)."""
    announce_cancel([r.delivery_id for r in rows])


@router.post("/cancel", response_model=BulkCancelPublic)
def cancel_jobs(body: CancelFilter, key: SubmitKey) -> BulkCancelPublic:
    """Cancel every job of the caller that matches the filter (queued: at once; running: asked to
    stop), at most MEDIC_MAX_BULK_CANCEL per call, oldest first, in one transaction; `more` says
    whether others match (call again). Each job gets its own event, its actor the API key; the
    call is recorded in the action log."""
    match = _bulk_filter(body, key, state=None)
    done = bulk.cancel_matching(match, actor=f"api:{key.id}", limit=get_settings().max_bulk_cancel, state=body.state)
    return BulkCancelPublic(
        cancelled=done.changed, requested=done.requested, job_ids=done.job_ids, more=done.more, limit=done.limit
    )


@router.post("/retry", response_model=BulkRetryPublic, status_code=202)
def retry_jobs(body: RetryFilter, key: AdminKey) -> BulkRetryPublic:
    """Run again every dead job of the caller that matches the filter, with a fresh set of
    attempts: at most MEDIC_MAX_BULK_CANCEL per call, oldest first, in one transaction; `more`
    says whether others match. Each job gets its event `manual_retry`; the call is recorded in
    the action log. Admin only, as the retry of one job."""
    match = _bulk_filter(body, key, state=JobState.DEAD.value)
    done = bulk.retry_matching(match, actor=f"api:{key.id}", limit=get_settings().max_bulk_cancel)
    return BulkRetryPublic(retried=done.changed, job_ids=done.job_ids, more=done.more, limit=done.limit)


def _bulk_filter(body: CancelFilter | RetryFilter, key: ApiKey, *, state: str | None) -> JobFilter:
    return JobFilter(
        tenant_for(key, body.tenant), state, body.type, body.queue, body.schedule_id, body.workflow_id,
        aware(body.created_after), aware(body.created_before), body.args_contains,
    )  # fmt: skip


@router.post("/{job_id:uuid}/retry", response_model=JobPublic, status_code=202)
def retry_job(job_id: uuid.UUID, key: AdminKey) -> JobPublic:
    """Run a dead job again, with a fresh set of attempts."""
    [row] = commit_then_publish(
        lambda conn: [transitions.retry_dead(conn, job_id, key.tenant, actor=f"api:{key.id}", now=utcnow())]
    )
    if row is None:
        current = _owned(job_id, key.tenant)
        raise InvalidTransitionError(f"only dead jobs can be retried; this one is {current.state}", state=current.state)
    _log_job("retried", row)
    return JobPublic.of(row)
