"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api import metrics
from worker import db, keys
from worker.celery_app import app as celery_app
from worker.migrate import head_revision
from worker.redis_client import get_redis

router = APIRouter(tags=["health"])


@router.get("/health/live")
def live() -> dict[str, str]:
    """The process answers: nothing else is checked (a restart would not fix a dependency)."""
    return {"status": "ok"}


def _ledger() -> dict[str, Any]:
    with db.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
        revision = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    head = head_revision()
    return {"ok": revision == head, "revision": revision, "head": head}


def _redis() -> dict[str, Any]:
    get_redis().ping()
    return {"ok": True}


def _broker() -> dict[str, Any]:
    with celery_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
    return {"ok": True}


def _workers() -> dict[str, Any]:
    count = sum(1 for _ in get_redis().scan_iter(match=keys.worker_presence_pattern(), count=500))
    # Informational: a fleet with no busy process is healthy; workers are judged by Flower/Celery.
    return {"ok": True, "busy_processes": count}


CHECKS: dict[str, Callable[[], dict[str, Any]]] = {
    "ledger": _ledger,
    "redis": _redis,
    "broker": _broker,
    "workers": _workers,
}


@router.get("/health/ready")
def ready() -> JSONResponse:
    """Every dependency the API needs to accept work: 200 if all answer, else 503 naming the failure."""
    results: dict[str, Any] = {}
    for name, check in CHECKS.items():
        started = time.perf_counter()
        try:
            results[name] = check()
        except Exception as exc:  # noqa: BLE001 - a failed check is a result, not an error
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
        results[name]["ms"] = round((time.perf_counter() - started) * 1000, 1)
    ok = all(r["ok"] for r in results.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": results}, status_code=200 if ok else 503)


@router.get("/metrics")
def prometheus_metrics() -> Response:
    metrics.refresh_ledger_gauges()
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
