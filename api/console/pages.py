"""The console's pages (GET): each one a view over the API's own reads, called with the session's
key, so a page shows exactly what that key may read through the API."""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from api.console import filters, overview
from api.console.render import HEADERS, page
from api.console.session import Viewer, current_session
from api.deps import allowed, tenant_for
from api.routes import jobs as job_routes
from api.routes import queues as queue_routes
from api.routes import schedules as schedule_routes
from api.routes import workflows as workflow_routes
from worker.broker.counters import known_queues
from worker.control import alerts
from worker.errors import InvalidArgsError, JobNotFoundError
from worker.ledger import actions, apikeys, db, queries
from worker.ledger import workflows as workflow_ledger
from worker.ledger.apikeys import ApiKey, Scope
from worker.ledger.records import Job
from worker.ledger.sessions import Session
from worker.ledger.states import TERMINAL_STATES
from worker.runtime.registry import all_specs
from worker.settings import get_settings

router = APIRouter(prefix="/console", include_in_schema=False)
PAGE_SIZE = 50
COUNT_UP_TO = 10_000


def acting_as(session: Session, tenant: str | None) -> ApiKey:
    """The session's key, reading another tenant when an admin key names one (api/deps.tenant_for)."""
    return dataclasses.replace(session.key, tenant=tenant_for(session.key, tenant))


@router.get("/sign-in", response_class=HTMLResponse)
def sign_in_page(request: Request, next: str = "/console") -> Response:
    if current_session(request) is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return page("sign_in.html", None, next=safe_next(next), error=None)


def safe_next(target: str) -> str:
    """Only a path of the console: never another site (an open redirect)."""
    return target if target.startswith("/console") and not target.startswith("//") else "/console"


@router.get("", response_class=HTMLResponse)
def overview_page(session: Viewer) -> Response:
    key = session.key
    admin = key.allows(Scope.ADMIN)
    context: dict[str, Any] = {
        "charts": overview.finished_charts(None if admin else key.tenant),
        "depth": overview.depth_chart() if admin else None,
        "queues": [],
        "alerts": [],
        "cluster": overview.cluster() if admin else None,
    }
    if admin:
        context["queues"] = queue_routes.list_queues(key)["queues"]
        context["alerts"] = [a for a in alerts.active() if a["firing"]]
    return page("overview.html", session, **context)


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request, session: Viewer, cursor: str | None = None) -> Response:
    params = dict(request.query_params)
    match = filters.job_filter(params, session.key)
    found = job_routes.jobs_page(match, limit=PAGE_SIZE, cursor=cursor, payloads=frozenset())
    given = filters.as_params(match, session.key.tenant)
    return page(
        "jobs.html", session, jobs=found.jobs, given=given, query=filters.query(given), next_cursor=found.next_cursor,
        states=filters.STATES, types=sorted(all_specs()), queues=sorted(known_queues()),
        tenant=match.tenant, done=params.get("done", ""),
    )  # fmt: skip


@router.get("/jobs/confirm", response_class=HTMLResponse)
def confirm_page(
    request: Request, session: Viewer, action: Annotated[str, Query(pattern="^(retry|cancel)$")]
) -> Response:
    """How many jobs a bulk button would act on, and a form to confirm it."""
    match = filters.job_filter(dict(request.query_params), session.key)
    states = queries.RETRYABLE if action == "retry" else queries.CANCELLABLE
    if match.state and match.state not in states:
        matched = 0
    else:
        with db.connect() as conn:
            matched = queries.count_matching(conn, match, up_to=COUNT_UP_TO + 1, states=states)
    given = filters.as_params(match, session.key.tenant)
    return page(
        "confirm.html", session, action=action, matched=matched, up_to=COUNT_UP_TO, given=given,
        query=filters.query(given), tenant=match.tenant, limit=get_settings().max_bulk_cancel,
    )  # fmt: skip


def _job(job_id: uuid.UUID, key: ApiKey) -> Job:
    """The ledger's row (the page shows its delivery and tenant, which JobPublic leaves out)."""
    with db.connect() as conn:
        job = queries.get_job(conn, job_id, key.tenant)
    if job is None:
        raise JobNotFoundError(f"no job {job_id}")
    return job


@router.get("/jobs/{job_id:uuid}", response_class=HTMLResponse)
def job_page(job_id: uuid.UUID, session: Viewer, tenant: str | None = None) -> Response:
    key = acting_as(session, tenant)
    job = _job(job_id, key)
    events = job_routes.get_events(job_id, key).events
    return page(
        "job.html", session, job=job, events=events, live=job.state not in TERMINAL_STATES,
        tenant_query=filters.query({"tenant": key.tenant}) if key.tenant != session.key.tenant else "",
    )  # fmt: skip


@router.get("/jobs/{job_id:uuid}/{field}.json")
def job_field(job_id: uuid.UUID, field: str, session: Viewer, tenant: str | None = None) -> Response:
    """A job's args, result or error in full (the job page shows them truncated)."""
    if field not in ("args", "result", "error"):
        raise JobNotFoundError(f"no field {field!r}")
    job = _job(job_id, acting_as(session, tenant))
    body = json.dumps(getattr(job, field), indent=2, sort_keys=True, default=str, ensure_ascii=False)
    return Response(body, media_type="application/json", headers=HEADERS)


@router.get("/deliveries/{delivery_id:uuid}")
def delivery(delivery_id: uuid.UUID, session: Viewer) -> Response:
    """Flower's task id is the delivery id: the job it delivered, if it is this tenant's."""
    with db.connect() as conn:
        job_id = queries.job_of_delivery(conn, delivery_id, session.key.tenant)
    if job_id is None:
        raise JobNotFoundError(f"no job of this tenant was delivered as {delivery_id}")
    return RedirectResponse(f"/console/jobs/{job_id}", status_code=303)


@router.get("/find")
def find(session: Viewer, id: str = "") -> Response:
    """The box in the jobs page: a job id, or a delivery id (a Celery task id, as Flower shows it)."""
    try:
        wanted = uuid.UUID(id.strip())
    except ValueError:
        raise InvalidArgsError("paste a job id or a delivery id (a UUID)") from None
    with db.connect() as conn:
        known = queries.get_job(conn, wanted, session.key.tenant) is not None
    return RedirectResponse(f"/console/{'jobs' if known else 'deliveries'}/{wanted}", status_code=303)


@router.get("/queues", response_class=HTMLResponse)
def queues_page(session: Viewer) -> Response:
    listed = queue_routes.list_queues(allowed(session.key, Scope.ADMIN))["queues"]
    return page("queues.html", session, queues=listed)


@router.get("/schedules", response_class=HTMLResponse)
def schedules_page(session: Viewer) -> Response:
    listed = schedule_routes.list_schedules(session.key, limit=500).schedules
    return page("schedules.html", session, schedules=listed)


@router.get("/workflows", response_class=HTMLResponse)
def workflows_page(session: Viewer) -> Response:
    with db.connect() as conn:
        listed = workflow_ledger.list_recent(conn, session.key.tenant, limit=PAGE_SIZE)
    return page("workflows.html", session, workflows=listed)


@router.get("/workflows/{workflow_id:uuid}", response_class=HTMLResponse)
def workflow_page(workflow_id: uuid.UUID, session: Viewer) -> Response:
    return page("workflow.html", session, workflow=workflow_routes.get_workflow(workflow_id, session.key))


@router.get("/keys", response_class=HTMLResponse)
def keys_page(session: Viewer) -> Response:
    allowed(session.key, Scope.ADMIN)
    with db.connect() as conn:
        listed = apikeys.list_keys(conn)
    return page("keys.html", session, keys=listed, created=None, scopes=[s.value for s in Scope])


@router.get("/actions", response_class=HTMLResponse)
def actions_page(session: Viewer, before: int | None = None) -> Response:
    """The action log: every tenant's for an admin key, the key's tenant's otherwise."""
    admin = session.key.allows(Scope.ADMIN)
    with db.connect() as conn:
        listed = actions.recent(conn, tenant=None if admin else session.key.tenant, limit=PAGE_SIZE, before=before)
    older = listed[-1].id if len(listed) == PAGE_SIZE else None
    return page("actions.html", session, actions=listed, older=older)
