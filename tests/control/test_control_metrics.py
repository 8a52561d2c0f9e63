"""The control worker's /metrics: loop runs and a recovery made by the real recover_stuck loop."""

from __future__ import annotations

import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import ledger_view
from tests.ledger.make import a_new_job
from worker.clock import utcnow
from worker.ledger import db, transitions
from worker.testing.processes import Processes, free_port, wait_for


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return {}
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_control_worker_exports_loop_runs_and_recoveries(
    private_ledger: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    port = free_port()
    procs = Processes({**private_ledger, "MEDIC_METRICS_PORT": str(port)}, tmp_path_factory.mktemp("cm"))
    try:
        # a running job whose worker never existed: recover_stuck requeues it once its lease is over
        now = utcnow()
        new = a_new_job("cm", queue=f"q-cm-{uuid.uuid4().hex[:6]}", created_at=now)
        with db.begin() as conn:
            job = transitions.create_jobs(conn, [new], actor="test", now=now)[0]
            transitions.claim(conn, job.id, job.delivery_id, worker="ghost@nowhere", pid=1, now=now, lease_s=1)
        procs.control_plane()

        def recovered() -> float:
            return _scrape(port).get(
                ("medic_recoveries_total", (("loop", "recover_stuck"), ("outcome", "requeued"))), 0
            )

        assert wait_for(recovered, 30, 0.2, "recovery counted") == 1.0
        assert ledger_view.job(job.id).state == "queued"
        samples = _scrape(port)
        assert samples[("medic_loop_runs_total", (("loop", "recover_stuck"),))] >= 1
        last = samples[("medic_loop_last_run_timestamp_seconds", (("loop", "recover_stuck"),))]
        assert abs(last - utcnow().timestamp()) < 10
        assert samples[("medic_loop_duration_seconds_count", (("loop", "health_and_alerts"),))] >= 1
    finally:
        procs.stop_all()
