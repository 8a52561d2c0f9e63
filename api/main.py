"""The FastAPI application: `uvicorn --factory api.main:create_app`."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

from api import errors, metrics
from api.limits import BodySizeLimit, InflightLimit
from api.routes import health, jobs, queues
from worker.runtime.registry import load_job_modules
from worker.settings import get_settings


def create_app() -> FastAPI:
    s = get_settings()
    load_job_modules(s.job_modules)  # validation needs every job type before the first request
    app = FastAPI(
        title="medic",
        version="0.1.0",
        description="Submit background jobs; medic runs them on Celery and heals what breaks.",
    )
    errors.install(app)
    app.include_router(jobs.router)
    app.include_router(queues.router)
    app.include_router(health.router)

    @app.middleware("http")
    async def _observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.LATENCY.labels(request.method, path).observe(time.perf_counter() - started)
        metrics.REQUESTS.labels(request.method, path, str(response.status_code)).inc()
        return response

    app.add_middleware(BodySizeLimit, max_bytes=s.max_request_bytes)
    app.add_middleware(InflightLimit, limit=s.api_max_inflight)  # outermost: refuse before any work
    return app
