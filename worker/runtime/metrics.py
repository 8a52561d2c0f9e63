"""Prometheus metrics of worker processes, and the worker's registration as a queue consumer.

A prefork worker runs jobs in child processes, which a scrape of the main process cannot see. So
the main process switches prometheus-client to its multiprocess mode before the pool forks
(`worker_init`): every process writes its values to mmaped files in a directory of this worker's
own (a shared directory would add two workers' counts together), and the main process serves the
sum of them on `MEDIC_METRICS_PORT`. Metric objects are made lazily, after that switch, because
prometheus-client picks a metric's value class when the metric is made.

The main process also registers the queues it consumes in Redis every heartbeat (a sorted set per
queue scored by time): `MedicQueueUnconsumed` and `medic health --role worker` read it. A worker
that has run no job has no presence key, so presence alone cannot say a queue is consumed.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery import signals
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, start_http_server, values
from sqlalchemy import event
from sqlalchemy.pool import Pool

from worker.broker import redis_keys
from worker.broker.celery_app import CONTROL_QUEUE
from worker.broker.redis_client import get_redis
from worker.clock import utcnow
from worker.forksafe import PerProcess
from worker.ledger import db
from worker.runtime import pooltrouble
from worker.settings import get_settings

if TYPE_CHECKING:
    from worker.ledger.models import JobRow

log = logging.getLogger(__name__)

WORKER_PORT = 9808
CONTROL_PORT = 9809
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


@dataclass
class JobMetrics:
    finished: Counter
    duration: Histogram
    queue_wait: Histogram


def _make_job_metrics(_: str) -> JobMetrics:
    return JobMetrics(
        finished=Counter(
            "medic_jobs_finished_total",
            "Job runs ended, by outcome",
            ["queue", "type", "outcome"],
            registry=None,
        ),
        duration=Histogram(
            "medic_job_duration_seconds",
            "Run time of one attempt",
            ["queue", "type"],
            buckets=DURATION_BUCKETS,
            registry=None,
        ),
        queue_wait=Histogram(
            "medic_job_queue_wait_seconds",
            "Claim time minus publish time (or not_before, if later)",
            ["queue"],
            buckets=DURATION_BUCKETS,
            registry=None,
        ),
    )


# One set per process (forksafe: a prefork child makes its own, after the multiprocess switch).
_metrics: PerProcess[str, JobMetrics] = PerProcess(_make_job_metrics)


def job_metrics() -> JobMetrics:
    """The job metrics of this process, made on first use (after the multiprocess switch)."""
    return _metrics.get("job_metrics")


def outcome_of(kind: str, after: JobRow | None) -> str:
    """The outcome label of one finished run: a failure that used the last attempt is `dead`;
    otherwise `failed`, `timed_out` (kind `timeout`) or `worker_lost` (its process died)."""
    if kind == "succeeded":
        return "succeeded"
    if after is not None and after.state == "dead":
        return "dead"
    return {"timeout": "timed_out", "worker_lost": "worker_lost"}.get(kind, "failed")


def job_finished(job: JobRow, kind: str, after: JobRow | None) -> None:
    """Count one run of `job` (the claimed row) that ended with `kind`; never raises."""
    try:
        m = job_metrics()
        now = utcnow()
        started = job.started_at or now
        m.finished.labels(job.queue, job.type, outcome_of(kind, after)).inc()
        m.duration.labels(job.queue, job.type).observe(max(0.0, (now - started).total_seconds()))
        ready_at = max((t for t in (job.published_at, job.not_before) if t is not None), default=None)
        if ready_at is not None:
            m.queue_wait.labels(job.queue).observe(max(0.0, (started - ready_at).total_seconds()))
    except Exception:
        log.exception("job metrics not recorded")


# --- ledger pool use of each worker process (the children run the jobs, each with its own pool)


@dataclass
class PoolMetrics:
    checked_out: Gauge
    capacity: Gauge
    timeouts: Counter
    waits: Counter
    wait_seconds: Counter
    process: str


WAITS_DOC = "Ledger pool checkouts that found every connection checked out and waited (timed out or not)"
WAIT_SECONDS_DOC = "Seconds those checkouts waited"


def _make_pool_metrics(process: str) -> PoolMetrics:
    doc = "Ledger connections checked out of this process's pool"
    pool = PoolMetrics(
        checked_out=Gauge("medic_db_pool_checked_out", doc, ["process"], multiprocess_mode="liveall", registry=None),
        capacity=Gauge(
            "medic_db_pool_capacity", "Ledger pool size + overflow", ["process"],
            multiprocess_mode="liveall", registry=None,
        ),
        timeouts=Counter(
            "medic_db_pool_timeouts_total", "Ledger pool checkouts that timed out (MEDIC_DB_POOL_TIMEOUT_SECONDS)",
            ["process"], registry=None,
        ),
        waits=Counter("medic_db_pool_waits_total", WAITS_DOC, ["process"], registry=None),
        wait_seconds=Counter("medic_db_pool_wait_seconds_total", WAIT_SECONDS_DOC, ["process"], registry=None),
        process=process,
    )  # fmt: skip
    pool.capacity.labels(process).set(2 * get_settings().db_pool_size)
    return pool


_pool: PerProcess[str, PoolMetrics] = PerProcess(_make_pool_metrics)


def _pool_metrics() -> PoolMetrics:
    """Made per process: the label names the process (its pid changes across the fork)."""
    return _pool.get(f"worker:{socket.gethostname()}:{os.getpid()}")


def _on_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    pool = _pool_metrics()
    pool.checked_out.labels(pool.process).inc()


def _on_checkin(dbapi_connection: Any, record: Any) -> None:
    pool = _pool_metrics()
    pool.checked_out.labels(pool.process).dec()


def _on_pool_timeout() -> None:
    pool = _pool_metrics()
    pool.timeouts.labels(pool.process).inc()
    pooltrouble.note(pool.process, timed_out=True)


def _on_pool_wait(seconds: float) -> None:
    pool = _pool_metrics()
    pool.waits.labels(pool.process).inc()
    pool.wait_seconds.labels(pool.process).inc(seconds)
    pooltrouble.note(pool.process, timed_out=False)


def watch_pools() -> None:
    """Count checkouts, waits and timeouts of every pool in this process and the children it
    forks (class-level listeners and the ledger's hook lists survive the fork); one mmap write
    each, no network (a wait or timeout is also noted for the health loop: worker/runtime/pooltrouble.py)."""
    if not event.contains(Pool, "checkout", _on_checkout):
        event.listen(Pool, "checkout", _on_checkout)
        event.listen(Pool, "checkin", _on_checkin)
    if _on_pool_timeout not in db.pool_timeout_hooks:
        db.pool_timeout_hooks.append(_on_pool_timeout)
    if _on_pool_wait not in db.pool_wait_hooks:
        db.pool_wait_hooks.append(_on_pool_wait)


@signals.worker_process_shutdown.connect
def _on_child_exit(pid: int | None = None, **_: Any) -> None:
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        multiprocess.mark_process_dead(pid or os.getpid(), path)  # type: ignore[no-untyped-call]


# --- the worker's main process ---


def enable_multiprocess() -> str:
    """Give this process (and the children it will fork) a metrics directory of its own."""
    path = tempfile.mkdtemp(prefix=f"medic-metrics-{os.getpid()}-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    atexit.register(shutil.rmtree, path, True)
    return path


def serve(path: str, port: int, host: str) -> None:
    """Serve the sum of every process's values under `path` on host:port (a daemon thread)."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    start_http_server(port, addr=host, registry=registry)


def metrics_port(queues: list[str]) -> int:
    s = get_settings()
    if s.metrics_port is not None:
        return s.metrics_port
    return CONTROL_PORT if CONTROL_QUEUE in queues else WORKER_PORT


def consumer_member(hostname: str) -> str:
    return f"{hostname}:{os.getpid()}"


def register_consumer(hostname: str, queues: list[str], now: float | None = None) -> None:
    """Say "this worker consumes `queues`" for the next presence TTL; prunes stale entries."""
    now = time.time() if now is None else now
    ttl = get_settings().presence_ttl_seconds
    pipe = get_redis().pipeline(transaction=False)
    for queue in queues:
        key = redis_keys.queue_consumers(queue)
        pipe.zadd(key, {consumer_member(hostname): now})
        pipe.zremrangebyscore(key, "-inf", f"({now - ttl}")
    pipe.execute()


def unregister_consumer(hostname: str, queues: list[str]) -> None:
    pipe = get_redis().pipeline(transaction=False)
    for queue in queues:
        pipe.zrem(redis_keys.queue_consumers(queue), consumer_member(hostname))
    pipe.execute()


def live_consumers(queue: str, now: float | None = None) -> list[str]:
    """Workers (hostname:pid) that registered as consumers of `queue` within the presence TTL."""
    now = time.time() if now is None else now
    ttl = get_settings().presence_ttl_seconds
    return list(get_redis().zrangebyscore(redis_keys.queue_consumers(queue), now - ttl, "+inf"))


class _Registrar:
    """The main process's consumer registration, every heartbeat until shutdown."""

    def __init__(self, hostname: str, queues: list[str]) -> None:
        self.hostname, self.queues = hostname, queues
        self.stop = threading.Event()
        threading.Thread(target=self._run, name="medic-consumer", daemon=True).start()

    def _run(self) -> None:
        interval = get_settings().heartbeat_seconds
        while not self.stop.is_set():
            try:
                register_consumer(self.hostname, self.queues)
            except Exception as exc:  # noqa: BLE001 - Redis down: the registration lapses, and says so
                log.warning("consumer registration failed: %s", exc)
            self.stop.wait(interval)


_registrar: _Registrar | None = None


@signals.worker_init.connect
def _on_worker_init(sender: Any, **_: Any) -> None:
    """Main process, before the pool forks: multiprocess metrics and the scrape port."""
    if type(sender).__name__ == "TestWorkController":
        return  # an embedded test worker shares the test process: leave its metrics alone
    queues = sorted(sender.app.amqp.queues.consume_from or [get_settings().default_queue])
    path = enable_multiprocess()
    watch_pools()
    port = metrics_port(queues)
    if port:
        try:
            serve(path, port, get_settings().metrics_host)
            log.info("metrics on http://%s:%d/metrics", get_settings().metrics_host, port)
        except OSError as exc:  # another worker on this host has the port: run, but say so
            log.warning("metrics port %d unavailable (%s); set MEDIC_METRICS_PORT", port, exc)


@signals.worker_ready.connect
def _on_worker_ready(sender: Any, **_: Any) -> None:
    """Register as a consumer once the worker consumes: registered means ready (medic up's
    banner waits for it, `medic health` reads it)."""
    global _registrar
    if type(getattr(sender, "controller", None)).__name__ == "TestWorkController":
        return
    queues = sorted(sender.app.amqp.queues.consume_from or [get_settings().default_queue])
    _registrar = _Registrar(sender.hostname or socket.gethostname(), queues)


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    if _registrar is not None:
        _registrar.stop.set()
        try:
            unregister_consumer(_registrar.hostname, _registrar.queues)
        except Exception as exc:  # noqa: BLE001
            log.warning("consumer unregistration failed: %s", exc)
