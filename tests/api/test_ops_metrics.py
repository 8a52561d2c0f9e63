"""The API's /metrics serves the control plane's cluster-wide gauges (one snapshot per period)."""

from __future__ import annotations

import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from worker.clock import utcnow
from worker.control import alerts
from worker.errors import LedgerUnavailableError
from worker.ledger import db
from worker.submit import enqueue


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_serve_the_health_snapshot(stack: str) -> None:
    queue = f"q-snap-{uuid.uuid4().hex[:6]}"  # no worker consumes it: its jobs stay queued
    for i in range(3):
        enqueue("examples.echo", {"message": str(i)}, queue=queue)
    alerts.health_and_alerts(utcnow())  # what the control plane runs every period
    got = _samples(httpx.get(f"{stack}/metrics", timeout=10).text)
    q = (("queue", queue),)
    assert got[("medic_queue_depth", q)] == 3
    assert got[("medic_queue_consumers", q)] == 0
    assert got[("medic_queue_high_watermark", q)] == 10_000
    assert got[("medic_queue_oldest_queued_age_seconds", q)] >= 0
    assert got[("medic_redis_noeviction", ())] == 1, "the shared Redis is noeviction"
    assert got[("medic_postgres_max_connections", ())] >= got[("medic_postgres_connections", ())] > 0
    assert got[("medic_workers_live", ())] >= 0
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
