"""The console's forms (POST): sign in and out, and every action, each the API's own operation
called with the session's key. A form must come from this origin and carry the session's CSRF
token; each action is recorded in the action log; the browser is then sent back (303)."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from api import bulk
from api.console import filters
from api.console.pages import acting_as, safe_next
from api.console.render import page
from api.console.session import (
    COOKIE,
    Viewer,
    check_csrf,
    clear_cookie,
    read_form,
    same_origin,
    set_cookie,
)
from api.deps import CACHE, allowed, find_key
from api.routes import jobs as job_routes
from api.routes import schedules as schedule_routes
from api.schedule_schemas import SchedulePatch
from worker.accept import paused
from worker.clock import utcnow
from worker.errors import ForbiddenError, InvalidArgsError
from worker.ledger import actions, apikeys, db, queries, sessions
from worker.ledger.apikeys import ApiKey, Scope
from worker.ledger.sessions import Session
from worker.settings import get_settings

router = APIRouter(prefix="/console", include_in_schema=False)


def _actor(key: ApiKey) -> str:
    return f"console:{key.id}"


def _log(key: ApiKey, action: str, target: dict[str, Any], *, tenant: str | None = None, changed: int = 1) -> None:
    with db.begin() as conn:
        actions.record(
            conn, actor=_actor(key), tenant=tenant or key.tenant, action=action, target=target,
            matched=1, changed=changed, now=utcnow(),
        )  # fmt: skip


async def _form(request: Request, session: Session) -> dict[str, str]:
    form = await read_form(request)
    check_csrf(request, session, form)
    return form


def _back(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


@router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    """Exchange an API key for a session. The key is checked as the API checks it."""
    if not same_origin(request):
        raise ForbiddenError("this form was posted from another site")
    form = await read_form(request)
    raw = form.get("api_key", "")
    target = safe_next(form.get("next", "/console"))
    key = await run_in_threadpool(find_key, raw) if raw else None
    if key is None or not key.allows(Scope.READ):
        why = "That API key is unknown or revoked." if key is None else "That key lacks the 'read' scope."
        return page("sign_in.html", None, next=target, error=why, status=401 if key is None else 403)

    def open_one() -> str:
        with db.begin() as conn:
            token, _ = sessions.open_session(conn, key, now=utcnow(), lifetime_s=get_settings().console_session_seconds)
        return token

    response = _back(target)
    set_cookie(response, await run_in_threadpool(open_one))
    return response


@router.post("/sign-out")
async def sign_out(request: Request, session: Viewer) -> Response:
    await _form(request, session)
    token = request.cookies.get(COOKIE, "")

    def close() -> None:
        with db.begin() as conn:
            sessions.close_session(conn, token)

    await run_in_threadpool(close)
    response = _back("/console/sign-in")
    clear_cookie(response)
    return response


@router.post("/jobs/bulk")
async def bulk_action(request: Request, session: Viewer) -> Response:
    """ "Retry all matching" (admin, dead jobs) or "Cancel all matching" (submit), confirmed on
    the confirm page: one bounded request, as `POST /jobs/retry` and `POST /jobs/cancel` do."""
    form = await _form(request, session)
    action = form.get("action")
    match = filters.job_filter(form, session.key)
    limit = get_settings().max_bulk_cancel
    if action == "retry":
        allowed(session.key, Scope.ADMIN)
        match = dataclasses.replace(match, state="dead")
        done = await run_in_threadpool(bulk.retry_matching, match, actor=_actor(session.key), limit=limit)
    elif action == "cancel":
        allowed(session.key, Scope.SUBMIT)
        if match.state and match.state not in queries.CANCELLABLE:
            raise InvalidArgsError(f"{match.state} jobs cannot be cancelled")
        state, match = match.state, dataclasses.replace(match, state=None)
        done = await run_in_threadpool(
            lambda: bulk.cancel_matching(match, actor=_actor(session.key), limit=limit, state=state)
        )
    else:
        raise InvalidArgsError("action must be retry or cancel")
    given = filters.as_params(match, session.key.tenant)
    given["done"] = f"{action}:{done.changed + done.requested}:{int(done.more)}"
    return _back(f"/console/jobs?{filters.query(given)}")


@router.post("/jobs/{job_id:uuid}/{verb}")
async def job_action(job_id: uuid.UUID, verb: str, request: Request, session: Viewer) -> Response:
    """Retry (a dead job; admin) or cancel (submit) one job, as its API route does."""
    form = await _form(request, session)
    key = acting_as(session, form.get("tenant") or None)
    if verb == "retry":
        allowed(key, Scope.ADMIN)
        await run_in_threadpool(job_routes.retry_job, job_id, key)
    elif verb == "cancel":
        allowed(key, Scope.SUBMIT)
        await run_in_threadpool(job_routes.cancel_job, job_id, key, Response())
    else:
        raise InvalidArgsError("a job can be retried or cancelled")
    await run_in_threadpool(_log, session.key, verb, {"job_id": str(job_id)}, tenant=key.tenant)
    other = key.tenant != session.key.tenant
    back = f"/console/jobs/{job_id}" + (f"?{filters.query({'tenant': key.tenant})}" if other else "")
    return _back(back)


@router.post("/queues/{queue}/{verb}")
async def queue_action(queue: str, verb: str, request: Request, session: Viewer) -> Response:
    """Pause (durable; admission per the form's choice) or resume a queue. Admin only."""
    form = await _form(request, session)
    allowed(session.key, Scope.ADMIN)
    if verb == "pause":
        refuse = form.get("admission") == paused.REFUSE
        done = await run_in_threadpool(paused.pause_queue, queue, actor=_actor(session.key), refuse=refuse)
    elif verb == "resume":
        done = await run_in_threadpool(paused.resume_queue, queue, actor=_actor(session.key))
    else:
        raise InvalidArgsError("a queue can be paused or resumed")
    await run_in_threadpool(_log, session.key, f"{verb}_queue", {"queue": queue}, changed=int(done.changed))
    return _back("/console/queues")


@router.post("/schedules/{schedule_id:uuid}/{verb}")
async def schedule_action(schedule_id: uuid.UUID, verb: str, request: Request, session: Viewer) -> Response:
    """Pause, resume or trigger a schedule (submit scope, as its API routes)."""
    await _form(request, session)
    allowed(session.key, Scope.SUBMIT)
    if verb in ("pause", "resume"):
        patch = SchedulePatch(paused=verb == "pause")
        await run_in_threadpool(schedule_routes.patch_schedule, schedule_id, patch, session.key)
    elif verb == "trigger":
        await run_in_threadpool(schedule_routes.trigger_schedule, schedule_id, session.key, Response())
    else:
        raise InvalidArgsError("a schedule can be paused, resumed or triggered")
    await run_in_threadpool(_log, session.key, f"{verb}_schedule", {"schedule_id": str(schedule_id)})
    return _back("/console/schedules")


@router.post("/keys")
async def create_key(request: Request, session: Viewer) -> Response:
    """A new key, shown once on the page this answers with (never stored, only its hash). Admin only."""
    form = await _form(request, session)
    allowed(session.key, Scope.ADMIN)
    scopes = apikeys.parse_scopes(",".join(s.value for s in Scope if form.get(f"scope_{s.value}")))
    tenant = form.get("tenant") or session.key.tenant
    queues = apikeys.parse_queues(form.get("queues"))
    name = form.get("name") or None

    def create() -> tuple[str, list[apikeys.KeyInfo]]:
        with db.begin() as conn:
            raw = apikeys.create_key(conn, tenant, scopes, name, queues=queues)
            actions.record(
                conn, actor=_actor(session.key), tenant=tenant, action="create_key",
                target={"prefix": raw[:10], "scopes": ",".join(sorted(scopes)), "name": name or ""},
                matched=1, changed=1, now=utcnow(),
            )  # fmt: skip
        with db.connect() as conn:
            return raw, apikeys.list_keys(conn)

    raw, listed = await run_in_threadpool(create)
    return page("keys.html", session, keys=listed, created=raw, scopes=[s.value for s in Scope])


@router.post("/keys/{key_id:uuid}/revoke")
async def revoke_key(key_id: uuid.UUID, request: Request, session: Viewer) -> Response:
    """Revoke a key: the API refuses it within its cache period; its console sessions end at once."""
    await _form(request, session)
    allowed(session.key, Scope.ADMIN)

    def revoke() -> bool:
        with db.begin() as conn:
            done = apikeys.revoke_key(conn, key_id)
            actions.record(
                conn, actor=_actor(session.key), tenant=session.key.tenant, action="revoke_key",
                target={"key_id": str(key_id)}, matched=1, changed=int(done), now=utcnow(),
            )  # fmt: skip
        return done

    await run_in_threadpool(revoke)
    CACHE.forget(key_id)  # this process refuses it at once; the others within api_key_cache_seconds
    return _back("/console/keys")
