"""The API's /metrics serves the control plane's cluster-wide gauges (one snapshot per period)."""

from __future__ import annotations

import sys
import threading
import uuid
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from worker.accept import enqueue
from worker.clock import utcnow
from worker.control import registry
from worker.errors import LedgerUnavailableError
from worker.ledger import db
from worker.ledger.models import jobs
from worker.ops.cli import api_metrics_dir
from worker.testing.processes import Processes, free_port, wait_for


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _state(job_id: uuid.UUID) -> str | None:
    with db.connect() as conn:
        return conn.scalar(sa.select(jobs.c.state).where(jobs.c.id == job_id))


def test_metrics_serve_the_health_snapshot(stack: str) -> None:
    queue = f"q-snap-{uuid.uuid4().hex[:6]}"  # no worker consumes it: its jobs stay queued
    for i in range(3):
        enqueue("examples.echo", {"message": str(i)}, queue=queue)
    # A worker process beats from its first job on: one job on the stack's worker makes it live.
    ran = enqueue("examples.echo", {"message": "beat"})
    wait_for(lambda: _state(ran.job.id) == "succeeded", 60, 0.2, "a job on the stack's worker")
    with db.connect() as conn:
        oldest = conn.scalar(sa.select(sa.func.min(jobs.c.created_at)).where(jobs.c.queue == queue))
    now = utcnow()
    registry.health_and_alerts(now)  # what the control plane runs every period
    got = _samples(httpx.get(f"{stack}/metrics", timeout=10).text)
    q = (("queue", queue),)
    assert got[("medic_queue_depth", q)] == 3
    assert got[("medic_queue_consumers", q)] == 0
    assert got[("medic_queue_high_watermark", q)] == 10_000
    # The age of the first job enqueued, as of the snapshot (a later snapshot only makes it older).
    age = got[("medic_queue_oldest_queued_age_seconds", q)]
    assert (now - oldest).total_seconds() <= age <= (utcnow() - oldest).total_seconds(), (age, oldest, now)
    assert got[("medic_redis_noeviction", ())] == 1, "the shared Redis is noeviction"
    assert got[("medic_postgres_max_connections", ())] >= got[("medic_postgres_connections", ())] > 0
    assert got[("medic_workers_live", ())] >= 1, "the stack's worker beats"
    assert ("medic_alerts_firing", (("alert", "MedicQueueUnconsumed"), ("severity", "critical"))) in got
    assert any(name == "medic_db_pool_capacity" and dict(labels)["process"].startswith("api:") for name, labels in got)


def test_api_counts_a_pool_checkout_that_timed_out(medic_env: dict[str, str]) -> None:
    """The API's hook on the ledger: a checkout past a full pool (1 + 1, both held) is counted
    once in the registry GET /metrics serves. Fails if api/metrics.py does not hook the ledger."""
    from prometheus_client import REGISTRY

    from api import metrics

    def count() -> float:
        return REGISTRY.get_sample_value("medic_db_pool_timeouts_total", {"process": metrics.api_process()}) or 0.0

    before = count()
    engine = db.make_engine(medic_env["MEDIC_DATABASE_URL"], pool_size=1, pool_timeout=0.1)
    held = [engine.connect(), engine.connect()]
    try:
        with pytest.raises(LedgerUnavailableError), db.ledger_errors(), engine.connect():
            pass
    finally:
        for conn in held:
            conn.close()
        engine.dispose()
    assert count() == before + 1


def test_api_counts_a_checkout_that_waited_for_a_full_pool(medic_env: dict[str, str]) -> None:
    """Pool of 1 + 1: the two checkouts that make its connections do not wait; with both held, a
    third waits until another thread returns one, and gets it: one wait, no timeout. Fails if the
    engine's pool does not report waits (db.WaitCountingPool), the API does not hook them, or
    every checkout counts as a wait, or one at capacity with an idle connection does."""
    from prometheus_client import REGISTRY

    from api import metrics

    def value(name: str) -> float:
        return REGISTRY.get_sample_value(name, {"process": metrics.api_process()}) or 0.0

    waits, timeouts, seconds = (value(n) for n in ("medic_db_pool_waits_total", "medic_db_pool_timeouts_total",
                                                   "medic_db_pool_wait_seconds_total"))  # fmt: skip
    engine = db.make_engine(medic_env["MEDIC_DATABASE_URL"], pool_size=1, pool_timeout=20)
    held = [engine.connect(), engine.connect()]
    assert value("medic_db_pool_waits_total") == waits, "a checkout that found room waited"
    released = threading.Event()

    def release_once_blocked() -> None:  # only after the third checkout is waiting in the pool
        wait_for(lambda: _pool_blocked(engine), 10, 0.01, "the third checkout blocks")
        held.pop().close()
        released.set()

    releaser = threading.Thread(target=release_once_blocked)
    try:
        releaser.start()
        with db.ledger_errors(), engine.connect():
            pass
        releaser.join(timeout=15)
        assert released.is_set()
        with engine.connect():  # at capacity (1 + 1 made), one idle: no wait
            pass
    finally:
        for conn in held:
            conn.close()
        engine.dispose()
    assert value("medic_db_pool_waits_total") == waits + 1
    assert value("medic_db_pool_timeouts_total") == timeouts
    assert value("medic_db_pool_wait_seconds_total") > seconds


def _pool_blocked(engine: sa.Engine) -> bool:
    """A thread is blocked in the pool's get (waiting on its condition variable)."""
    return bool(engine.pool._pool.not_empty._waiters)  # type: ignore[attr-defined]


def test_one_scrape_sums_every_uvicorn_worker(procs: Processes) -> None:
    """`medic api --workers 2`: requests are spread over two processes (each writes its own file in
    the metrics directory), yet every scrape, whichever worker answers it, counts all of them.
    Fails if the API serves only the answering process's registry (each scrape would show its
    share), or the command gives the workers no shared directory."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    stale = api_metrics_dir(port) / "counter_424242.db"  # a previous run's file on this port
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"left over from a previous run")
    medic = str(Path(sys.executable).with_name("medic"))
    api = procs.http_server("api-2w", [medic, "api", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"], url)
    assert not stale.exists(), "the directory is wiped at start (a stale file would be summed in)"
    key = ("medic_api_requests_total", (("method", "GET"), ("route", "/health/live"), ("status", "200")))
    before = _samples(httpx.get(f"{url}/metrics", timeout=10).text)[key]  # the readiness probes so far
    n = 40
    for _ in range(n):  # a new connection each: the kernel hands them to either worker
        assert httpx.get(f"{url}/health/live", timeout=10).status_code == 200
    # uvicorn's workers are spawned children (its third child is multiprocessing's resource tracker)
    workers = [pid for pid in api.children() if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(workers) == 2, workers
    [path] = {_environ(pid)["PROMETHEUS_MULTIPROC_DIR"] for pid in workers}  # one directory, set by `medic api`
    assert Path(path) == api_metrics_dir(port)  # one per port, not a new one per start
    counted_by = {f.stem.split("_")[1] for f in Path(path).glob("counter_*.db")}
    assert counted_by == {str(pid) for pid in workers}, "both workers counted requests"
    for _ in range(6):  # a new connection each: both workers answer some of these
        assert _samples(httpx.get(f"{url}/metrics", timeout=10).text)[key] == before + n


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)
