"""Prometheus metrics of the API process."""

from __future__ import annotations

import hmac
import logging

from prometheus_client import Counter, Gauge, Histogram

from worker.errors import LedgerUnavailableError, UnauthorizedError
from worker.ledger import db, queries
from worker.settings import get_settings

log = logging.getLogger(__name__)

REQUESTS = Counter("medic_api_requests_total", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram("medic_api_request_seconds", "HTTP request latency", ["method", "route"])
JOBS_ACCEPTED = Counter("medic_jobs_accepted_total", "Jobs accepted by the API", ["type", "queue"])
JOBS_REJECTED = Counter("medic_jobs_rejected_total", "Submissions refused with 429", ["queue", "reason"])
JOBS = Gauge("medic_jobs", "Live jobs in the ledger by state and queue", ["state", "queue"])
LEDGER_UP = Gauge("medic_ledger_up", "1 if the last ledger query of this process succeeded")


def refresh_ledger_gauges() -> None:
    """Counts of live jobs only: an index range, cheap whatever the ledger's size."""
    try:
        with db.connect() as conn:
            rows = queries.live_counts_by_queue(conn)
    except LedgerUnavailableError as exc:
        LEDGER_UP.set(0)
        log.warning("metrics: ledger unavailable: %s", exc)
        return
    LEDGER_UP.set(1)
    JOBS.clear()
    for state, queue, count in rows:
        JOBS.labels(state=state, queue=queue).set(count)


def check_scrape_token(authorization: str | None) -> None:
    """With MEDIC_METRICS_TOKEN set, /metrics answers only `Authorization: Bearer <token>`.

    Raises:
        UnauthorizedError: the token is set and the request does not carry it (401).
    """
    token = get_settings().metrics_token
    if not token:
        return
    scheme, _, given = (authorization or "").partition(" ")
    # compare_digest: the time taken must not tell a scraper how much of the token it got right
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise UnauthorizedError("GET /metrics needs Authorization: Bearer <MEDIC_METRICS_TOKEN>")
