"""The HTTP baseline of bench/throughput.py: a bare FastAPI endpoint that parses a job-shaped
body and only calls `apply_async` (no auth, no ledger, no validation against a signature).

    .venv/bin/python -m uvicorn bench.plain_api:app --host 127.0.0.1 --port 8001 --no-access-log

Publishes `plain.noop` on bench/plain_celery_app.py's app (its BENCH_PLAIN_PREFIX key prefix).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

from bench.plain_celery_app import plain_noop

app = FastAPI(title="plain-celery-api")


class JobIn(BaseModel):
    type: str
    args: dict[str, Any] = Field(default_factory=dict)
    queue: str | None = None


@app.post("/jobs", status_code=202)
def submit(body: JobIn) -> dict[str, str]:
    """A sync route, like medic's POST /jobs, so both run in the same threadpool."""
    result = plain_noop.apply_async(queue=body.queue)
    return {"id": str(result.id), "state": "queued"}


@app.get("/health/live")
def live() -> dict[str, str]:
    return {"status": "ok"}
