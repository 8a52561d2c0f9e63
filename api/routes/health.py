"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from api import metrics
from worker.broker import presence, redis_keys
from worker.broker.celery_app import app as celery_app
from worker.broker.redis_client import get_redis
from worker.control.loop import loop_stats
from worker.ledger import db
from worker.ledger.migrate import head_revision, revision_of
from worker.settings import get_settings

router = APIRouter(tags=["health"])


@router.get("/health/live")
def live() -> dict[str, str]:
    """The process answers: nothing else is checked (a restart would not fix a dependency)."""
    return {"status": "ok"}


def _ledger() -> dict[str, Any]:
    with db.connect() as conn:
        revision = revision_of(conn)
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
    """Live process incarnations from a sorted set scored by last beat: bounded by the fleet,
    where a SCAN for presence keys walked the whole keyspace on every probe."""
    count = presence.live_count(get_settings().presence_ttl_seconds)
    return {"ok": True, "processes_with_heartbeat": count}


def _control() -> dict[str, Any]:
    """Beat and the control worker: the beat_alive tick is scheduled by beat, run by the control worker."""
    tick = get_redis().get(redis_keys.beat_alive())
    age = round(time.time() - float(tick), 1) if tick else None
    recover = loop_stats("recover_stuck").get("last", {})
    return {"ok": tick is not None, "beat_tick_age_s": age, "recover_stuck_last": recover}


# required: the API cannot accept work without it. The others are reported, and an API that
# stops serving because beat is down would only turn one outage into two.
CHECKS: dict[str, tuple[Callable[[], dict[str, Any]], bool]] = {
    "ledger": (_ledger, True),
    "redis": (_redis, True),
    "broker": (_broker, True),
    "workers": (_workers, False),
    "control": (_control, False),
}


@router.get("/health/ready")
def ready() -> JSONResponse:
    """200 if every dependency the API needs to accept work answers, else 503 naming the failure;
    workers and the control plane are reported too, without failing readiness."""
    results: dict[str, Any] = {}
    for name, (check, required) in CHECKS.items():
        started = time.perf_counter()
        try:
            results[name] = check()
        except Exception as exc:  # noqa: BLE001 - a failed check is a result, not an error
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
        results[name]["required"] = required
        results[name]["ms"] = round((time.perf_counter() - started) * 1000, 1)
    ok = all(r["ok"] for r in results.values() if r["required"])
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": results}, status_code=200 if ok else 503)


@router.get("/metrics", responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
def prometheus_metrics(authorization: Annotated[str | None, Header()] = None) -> Response:
    """Prometheus exposition; behind a bearer token when MEDIC_METRICS_TOKEN is set."""
    metrics.check_scrape_token(authorization)
    metrics.refresh_ledger_gauges()
    metrics.refresh_pool_gauges()
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
