"""The FastAPI application: `uvicorn --factory api.main:create_app`."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response

from api import console, errors, metrics, slow, swagger
from api.limits import AuthBeforeBody, BodySizeLimit, InflightLimit, NulInQueryRefusal
from api.routes import alerts, health, jobs, queues, schedules, stream, workflows
from api.schemas import ErrorPublic
from worker import logs
from worker.broker.redis_client import eviction_risk
from worker.runtime.registry import load_job_modules
from worker.settings import get_settings

slow_log = logging.getLogger("medic.api.slow")

# Every error any route may answer, with the one body shape they share (api/errors.py).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorPublic, "description": description}
    for status, description in {
        400: "The body could not be read (not UTF-8 JSON).",
        401: "No API key, or one that is unknown or revoked.",
        403: "The key lacks the scope (or the queue) this needs.",
        404: "No such job, workflow or schedule for this tenant, or no such route.",
        405: "The route does not take this method.",
        409: "The job is not in a state that allows this, or the idempotency key was used for another job.",
        413: "The request body or the job's args are over the limit.",
        422: "The request does not fit the schema, the job type is unknown, or its args do not fit.",
        429: "The queue is over its watermark or the tenant over its quota: see Retry-After.",
        503: "The ledger is unavailable or this process is at its in-flight limit: see Retry-After.",
    }.items()
}


def create_app() -> FastAPI:
    s = get_settings()
    logs.setup(s.log_format)  # uvicorn set up its loggers before it called this factory
    logs.restyle("uvicorn", "uvicorn.error", "uvicorn.access", fmt=s.log_format)
    load_job_modules(s.job_modules)  # validation needs every job type before the first request
    if risk := eviction_risk():
        logging.getLogger("medic.api").error("%s", risk)
    app = FastAPI(
        title="medic",
        version="0.1.0",
        description="Submit background jobs; medic runs them on Celery and heals what breaks.",
        responses=ERROR_RESPONSES,
        docs_url=None,  # api/swagger.py serves /docs from local assets
    )
    swagger.install(app)
    errors.install(app)
    app.include_router(stream.router)  # before jobs: /jobs/stream must not match /jobs/{id}
    app.include_router(jobs.router)
    app.include_router(workflows.router)
    app.include_router(queues.router)
    app.include_router(schedules.router)
    app.include_router(health.router)
    app.include_router(alerts.router)
    console.install(app)  # after errors.install: it wraps those handlers for its pages

    app.add_middleware(AuthBeforeBody)  # the key from the headers before any body (inside _observe: counted)

    @app.middleware("http")
    async def _observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        ledger = slow.start()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        elapsed = time.perf_counter() - started
        method = metrics.method_label(request.method)
        metrics.LATENCY.labels(method, path).observe(elapsed)
        slow.window.add(elapsed)
        metrics.REQUESTS.labels(method, path, str(response.status_code)).inc()
        if elapsed * 1000 > s.slow_request_ms:
            slow_log.warning(
                "slow request %s %s -> %d in %.0f ms (ledger %.0f ms)",
                request.method, path, response.status_code, elapsed * 1000, ledger[0] * 1000,
                extra={"route": path, "status": response.status_code, "duration_ms": round(elapsed * 1000, 1),
                       "ledger_ms": round(ledger[0] * 1000, 1)},
            )  # fmt: skip
        return response

    app.add_middleware(NulInQueryRefusal)
    app.add_middleware(BodySizeLimit, max_bytes=s.max_request_bytes)
    app.add_middleware(InflightLimit, limit=s.api_max_inflight)  # outermost: refuse before any work
    return app
