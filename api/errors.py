"""The one place where errors become HTTP status codes. Bodies are `{"error", "message", ...}`."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from api import metrics
from worker.errors import (
    CommitUnconfirmedError,
    ForbiddenError,
    IdempotencyConflictError,
    InvalidArgsError,
    InvalidTransitionError,
    JobNotFoundError,
    LedgerUnavailableError,
    MedicError,
    PayloadTooLargeError,
    PermanentError,
    QueueFullError,
    QueuePausedError,
    RequestTooLargeError,
    ScheduleConflictError,
    ScheduleNotFoundError,
    TenantQuotaError,
    UnauthorizedError,
    UnknownJobTypeError,
    UnknownQueueError,
    WorkflowNotFoundError,
)
from worker.ledger.db import is_connection_error
from worker.settings import get_settings

log = logging.getLogger(__name__)


STATUS: dict[type[MedicError], int] = {
    UnauthorizedError: 401,
    ForbiddenError: 403,
    JobNotFoundError: 404,
    WorkflowNotFoundError: 404,
    ScheduleNotFoundError: 404,
    ScheduleConflictError: 409,
    InvalidTransitionError: 409,
    IdempotencyConflictError: 409,
    PayloadTooLargeError: 413,
    RequestTooLargeError: 413,
    UnknownJobTypeError: 422,
    UnknownQueueError: 422,
    InvalidArgsError: 422,
    QueueFullError: 429,
    QueuePausedError: 429,  # details: queue, paused_at
    TenantQuotaError: 429,
    LedgerUnavailableError: 503,
    CommitUnconfirmedError: 503,  # details: outcome ("not_written" / "unknown") and job_ids
}


def status_for(exc: MedicError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400 if isinstance(exc, PermanentError) else 503


def error_body(code: str, message: str, **details: Any) -> dict[str, Any]:
    return {"error": code, "message": message, **details}


def medic_error_response(exc: MedicError) -> JSONResponse:
    status = status_for(exc)
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if status == 503:
        headers["Retry-After"] = str(exc.details.get("retry_after", get_settings().ledger_retry_after_seconds))
    if status == 429:
        headers["Retry-After"] = str(exc.details["retry_after"])
        metrics.JOBS_REJECTED.labels(exc.details.get("queue", ""), exc.code).inc()
    return JSONResponse(error_body(exc.code, exc.message, **exc.details), status_code=status, headers=headers)


async def _medic_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MedicError)
    return medic_error_response(exc)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [{"loc": ".".join(str(p) for p in e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
    return JSONResponse(error_body("invalid_request", "the request does not fit the schema", problems=problems), 422)


def _allowed_methods(request: Request) -> str:
    """Every method the app serves at this path. Starlette's own Allow header names only the
    first route that matched the path, so a path with a GET and a POST route (/jobs) under-reports."""
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches({**request.scope, "method": ""})
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    return JSONResponse(error_body(code, str(exc.detail)), exc.status_code, headers=headers)


async def _database_error(_: Request, exc: Exception) -> JSONResponse:
    if is_connection_error(exc):
        return medic_error_response(LedgerUnavailableError("ledger unavailable"))
    log.exception("ledger error", exc_info=exc)
    return JSONResponse(error_body("internal_error", "unexpected ledger error"), 500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(MedicError, _medic_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(sa_exc.SQLAlchemyError, _database_error)
