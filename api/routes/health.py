"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Annotated, Any

from alembic.script import ScriptDirectory
from fastapi import APIRouter, Header, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from api import metrics
from api.deps import find_key
from worker.broker import presence, redis_keys
from worker.broker.celery_app import app as celery_app
from worker.broker.redis_client import get_redis
from worker.control.loop import loop_stats
from worker.ledger import db, schema_window
from worker.ledger.apikeys import Scope
from worker.ledger.migrate import revision_of, scripts
from worker.settings import get_settings

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/health/live")
def live() -> dict[str, str]:
    """The process answers: nothing else is checked (a restart would not fix a dependency)."""
    return {"status": "ok"}


@functools.cache
def _scripts() -> ScriptDirectory:
    return scripts()


def _ledger() -> dict[str, Any]:
    """Answers, and its schema is within this code's window (worker/ledger/schema_window.py): an
    old pod stays ready after an additive migration, and a rollback image is ready too."""
    with db.connect() as conn:
        verdict = schema_window.judge(conn, _scripts(), revision_of(conn))
    return verdict.details()


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


# required: the API cannot accept work without it. Only the ledger is: with Redis (the broker)
# down the API still answers 202 and the outbox publishes later (tests/api/test_outages.py), so
# pulling every API pod out of its Service on a Redis blip would refuse work medic can keep. The
# others are reported, and an API that stops serving because beat is down would only turn one
# outage into two.
CHECKS: dict[str, tuple[Callable[[], dict[str, Any]], bool]] = {
    "ledger": (_ledger, True),
    "redis": (_redis, False),
    "broker": (_broker, False),
    "workers": (_workers, False),
    "control": (_control, False),
}

_last_error: dict[str, str | None] = {}


def _run(name: str, check: Callable[[], dict[str, Any]], required: bool) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        result = check()
        error = None
    except Exception as exc:  # noqa: BLE001 - a failed check is a result, not an error
        error = f"{type(exc).__name__}: {exc}"[:300]
        result = {"ok": False, "error": error}
    if error != _last_error.get(name):  # in the log once per change, not once per probe
        if error is not None:
            log.warning("health check %s failed: %s", name, error)
        _last_error[name] = error
    result["required"] = required
    result["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


def _is_admin(authorization: str | None) -> bool:
    """An admin key sees the details; a ledger that cannot say counts as no."""
    scheme, _, raw = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    try:
        key = find_key(raw.strip())
    except Exception:  # noqa: BLE001 - readiness answers whatever the key store does
        return False
    return key is not None and key.allows(Scope.ADMIN)


@router.get("/health/ready")
def ready(authorization: Annotated[str | None, Header()] = None) -> JSONResponse:
    """200 if every dependency the API needs to accept work answers, else 503; other pieces are
    reported without failing readiness. Anyone sees which checks passed (booleans); an admin key
    sees the details (revisions, errors), which are logged too: an error names hosts and users."""
    results = {name: _run(name, check, required) for name, (check, required) in CHECKS.items()}
    ok = all(r["ok"] for r in results.values() if r["required"])
    if not _is_admin(authorization):
        results = {name: {"ok": r["ok"], "required": r["required"]} for name, r in results.items()}
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": results}, status_code=200 if ok else 503)


@router.get("/metrics", responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
def prometheus_metrics(authorization: Annotated[str | None, Header()] = None) -> Response:
    """Prometheus exposition; behind a bearer token when MEDIC_METRICS_TOKEN is set."""
    metrics.check_scrape_token(authorization)
    metrics.refresh_ledger_gauges()
    metrics.refresh_pool_gauges()
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
