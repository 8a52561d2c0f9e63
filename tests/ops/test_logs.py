"""MEDIC_LOG_FORMAT=json: every line of a worker is JSON, and the lines logged while a job runs
name it (job_id, delivery_id, queue, worker), so one job can be followed with grep."""

from __future__ import annotations

import json
import re
import uuid

from tests import ledger_view
from worker.submit import enqueue
from worker.testing.processes import Processes, wait_for


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_json_worker_lines_carry_the_job(procs: Processes) -> None:
    queue = f"q-logs-{uuid.uuid4().hex[:6]}"
    worker = procs.worker("json-worker", queues=queue, concurrency=1, MEDIC_LOG_FORMAT="json", MEDIC_METRICS_PORT="0")
    job = enqueue("examples.fail", {"message": "boom"}, queue=queue, max_attempts=1).job
    wait_for(lambda: ledger_view.job(job.id).state == "dead", 30, 0.1, "job dead")
    mine = wait_for(
        lambda: [ln for ln in _json_lines(worker.log()) if ln.get("job_id") == str(job.id)], 10, 0.1, "job lines"
    )
    assert all(ln["queue"] == queue and ln["delivery_id"] == str(job.delivery_id) for ln in mine), mine
    assert all(str(ln["worker"]).startswith("json-worker@") for ln in mine), mine
    celery_format = [ln for ln in worker.log().splitlines() if re.match(r"^\[\d{4}-\d\d-\d\d ", ln)]
    assert celery_format == [], "every log line is JSON (only Celery's start-up banner is printed as is)"
    assert {ln["logger"] for ln in _json_lines(worker.log())} >= {"celery.app.trace"}
