"""Prometheus metrics of the API process."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from typing import cast

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.broker import redis_keys
from worker.broker.redis_client import get_redis
from worker.control import snapshot
from worker.errors import LedgerUnavailableError, UnauthorizedError
from worker.ledger import db, queries
from worker.runtime import pool_metrics
from worker.runtime.scrape import bearer_matches
from worker.settings import get_settings

log = logging.getLogger(__name__)

REQUESTS = Counter("medic_api_requests_total", "HTTP requests answered", ["method", "route", "status"])
# The method label takes these values and "other": a client chooses the method, and every new
# label value is a new series kept for the life of the process.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY = Histogram("medic_api_request_seconds", "HTTP request latency", ["method", "route"])
JOBS_ACCEPTED = Counter("medic_jobs_accepted_total", "Jobs accepted by the API", ["type", "queue"])
JOBS_REJECTED = Counter("medic_jobs_rejected_total", "Submissions refused with 429", ["queue", "reason"])
# multiprocess_mode: how several uvicorn workers' values add up (ignored with one worker): the
# ledger counts are refreshed by whichever worker answers a scrape, so its latest value is right.
JOBS = Gauge(
    "medic_jobs", "Live jobs in the ledger by state and queue", ["state", "queue"], multiprocess_mode="mostrecent"
)
LEDGER_UP = Gauge("medic_ledger_up", "1 if the last ledger query succeeded", multiprocess_mode="mostrecent")


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
    if not bearer_matches(authorization, token):
        raise UnauthorizedError("GET /metrics needs Authorization: Bearer <MEDIC_METRICS_TOKEN>")


# --- cluster-wide gauges: the health_and_alerts loop measures them once per period
# (worker/control/snapshot.py) and every API process serves its last snapshot (one Redis GET).

QUEUE_GAUGES = {
    "depth": ("medic_queue_depth", "Messages in the broker's lists of the queue"),
    "high_watermark": ("medic_queue_high_watermark", "Depth at which the queue starts shedding"),
    "low_watermark": ("medic_queue_low_watermark", "Depth at which a shedding queue accepts again"),
    "shedding": ("medic_queue_shedding", "1 while the queue refuses work (429)"),
    "arrival_rate": ("medic_queue_arrival_rate", "Jobs per second entering the queue (smoothed)"),
    "drain_rate": ("medic_queue_drain_rate", "Jobs per second claimed from the queue (smoothed)"),
    "desired_slots": ("medic_queue_desired_slots", "Worker slots the autoscale loop wants for the queue"),
    "oldest_queued_age_seconds": ("medic_queue_oldest_queued_age_seconds", "Age of the queue's oldest ready job"),
    "consumers": ("medic_queue_consumers", "Live workers consuming the queue"),
}


def _gauge(name: str, doc: str, value: float | None, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    if value is not None:
        family.add_metric(list((labels or {}).values()), value)
    return family


class SnapshotCollector(Collector):
    """Serves the control plane's last snapshot; nothing when the loop has not run lately."""

    def collect(self) -> Iterator[Metric]:
        try:
            snap = snapshot.read()
            tick = get_redis().get(redis_keys.beat_alive())
        except Exception as exc:  # noqa: BLE001 - a scrape must answer even with Redis down
            log.warning("metrics: snapshot unavailable: %s", exc)
            return
        age = None if tick is None else max(0.0, time.time() - float(tick))
        yield _gauge("medic_beat_last_tick_age_seconds", "Age of beat's last liveness tick", age)
        if snap is None:
            return
        yield from self._queues(snap)
        redis_info = snap.get("redis", {})
        yield _gauge("medic_redis_used_memory_bytes", "Redis used_memory", redis_info.get("used_memory_bytes"))
        yield _gauge("medic_redis_maxmemory_bytes", "Redis maxmemory (0: none)", redis_info.get("maxmemory_bytes"))
        noevict = float(redis_info.get("maxmemory_policy") == "noeviction") if redis_info else None
        yield _gauge("medic_redis_noeviction", "1 when Redis maxmemory-policy is noeviction", noevict)
        pg = snap.get("postgres") or {}
        yield _gauge("medic_postgres_connections", "Connections PostgreSQL serves", pg.get("connections"))
        yield _gauge("medic_postgres_max_connections", "PostgreSQL max_connections", pg.get("max_connections"))
        yield _gauge("medic_workers_live", "Worker processes with a fresh heartbeat", snap.get("workers_live"))
        late = GaugeMetricFamily(
            "medic_schedule_late_seconds", "How late a schedule's next fire is, past its time",
            labels=["tenant", "schedule"],
        )  # fmt: skip
        for entry in snap.get("schedules_late", []):
            late.add_metric([entry["tenant"], entry["schedule"]], entry["late_seconds"])
        yield late
        firing = GaugeMetricFamily("medic_alerts_firing", "Alert instances firing now", labels=["alert", "severity"])
        for key, n in snap.get("alerts_firing", {}).items():
            firing.add_metric(key.split("|", 1), n)
        yield firing

    def _queues(self, snap: snapshot.Snapshot) -> Iterator[Metric]:
        for field, (name, doc) in QUEUE_GAUGES.items():
            family = GaugeMetricFamily(name, doc, labels=["queue"])
            for queue, values in snap.get("queues", {}).items():
                value = cast(Mapping[str, float | None], values).get(field)  # QUEUE_GAUGES names its keys
                if value is not None:
                    family.add_metric([queue], float(value))
            yield family


SNAPSHOT = SnapshotCollector()
REGISTRY.register(SNAPSHOT)


def exposition() -> bytes:
    """What GET /metrics serves. Under `medic api --workers N` every uvicorn worker writes its
    values to PROMETHEUS_MULTIPROC_DIR (set by the command before the workers start), and the
    worker that answers a scrape serves the sum over all of them: one scrape sees the whole API."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    registry.register(SNAPSHOT)
    return generate_latest(registry)


class _PoolCollector(Collector):
    """The pool families (worker/runtime/pool_metrics.py, shared with the workers) in this
    process's registry; under `--workers N` the multiprocess files serve them instead."""

    def collect(self) -> Iterator[Metric]:
        yield from pool_metrics.pool_families().collect()


REGISTRY.register(_PoolCollector())
pool_metrics.count_waits("api")


def api_process() -> str:
    return pool_metrics.process_label("api")


def refresh_pool_gauges() -> None:
    """This API process's own ledger pool."""
    pool_metrics.refresh_from(db.get_engine().pool, "api")


def method_label(method: str) -> str:
    """The request's method as a label: one of METHODS, or "other"."""
    return method if method in METHODS else "other"
