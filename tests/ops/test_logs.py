"""MEDIC_LOG_FORMAT=json: every line of a worker is JSON, and the lines logged while a job runs
name it (job_id, delivery_id, queue, worker), so one job can be followed with grep."""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa

from tests import ledger_view
from tests.conftest import KeyFactory
from tests.control.fabricate import empty_ledger, queued_job, running_job
from worker import logs
from worker.accept import enqueue
from worker.broker import presence
from worker.clock import seconds, utcnow
from worker.control.reconcile import reconcile_broker
from worker.control.recover import recover_stuck
from worker.control.timeouts import enforce_timeouts
from worker.ledger import db
from worker.ledger.models import jobs
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


def test_one_job_is_followed_by_its_id_across_api_and_worker_lines(procs: Processes, make_key: KeyFactory) -> None:
    """Submit over HTTP, let it die, retry it: `grep <job id>` over the API's and the worker's logs
    finds the API's accept and retry lines and the worker's lines of both runs, each a JSON line
    naming the job, its tenant and queue. Fails if the API logs nothing about a job, or a line
    about a job lacks its fields (the worker's tenant comes from the message's header)."""
    queue = f"q-logs-{uuid.uuid4().hex[:6]}"
    worker = procs.worker("grep-worker", queues=queue, concurrency=1, MEDIC_LOG_FORMAT="json", MEDIC_METRICS_PORT="0")
    api, url = procs.api("grep-api", MEDIC_LOG_FORMAT="json")
    tenant, key = make_key()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=15) as client:
        body = {"type": "examples.fail", "args": {"message": "boom"}, "queue": queue, "max_attempts": 1}
        job_id = client.post("/jobs", json=body).raise_for_status().json()["id"]
        wait_for(lambda: ledger_view.job(uuid.UUID(job_id)).state == "dead", 30, 0.1, "first run dead")
        assert client.post(f"/jobs/{job_id}/retry").status_code == 202
        # events: enqueued, claimed, dead; then retried, claimed, dead
        wait_for(lambda: len(ledger_view.reasons(uuid.UUID(job_id))) >= 6, 30, 0.1, "second run ends")
        assert ledger_view.job(uuid.UUID(job_id)).state == "dead"

    def grep(text: str) -> list[dict[str, object]]:
        return [json.loads(ln) for ln in text.splitlines() if job_id in ln]

    api_lines = wait_for(lambda: len(grep(api.log())) >= 2 and grep(api.log()), 10, 0.1, "API lines")
    worker_lines = wait_for(lambda: grep(worker.log()), 10, 0.1, "worker lines")
    for line in api_lines + worker_lines:
        assert line["job_id"] == job_id and line["tenant"] == tenant and line["queue"] == queue, line
    assert [ln["msg"].split()[0] for ln in api_lines] == ["accepted", "retried"], api_lines  # type: ignore[union-attr]
    deliveries = {ln["delivery_id"] for ln in worker_lines}
    assert len(deliveries) == 2, "both runs' worker lines (the retry is a new delivery)"
    assert all(str(ln["worker"]).startswith("grep-worker@") for ln in worker_lines), worker_lines


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The root logger's records as medic's JSON lines (logs.apply: the formatter and job filter)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logs.apply(handler, "json")
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_a_job_the_loops_act_on_can_be_followed_in_json_logs(
    private_ledger: dict[str, str], json_log: io.StringIO
) -> None:
    """recover_stuck takes a job from a vanished worker, enforce_timeouts kills an overdue one,
    reconcile_broker re-sends one whose publish the broker refused: each leaves one line that
    `grep <job id>` finds, with the job's fields and the reason. Fails if a loop logs counts only,
    or a line about a job lacks its fields (the loops run outside any job's context)."""
    empty_ledger()
    lost = running_job("logs-tenant", "ghost@nowhere", 4242, max_attempts=3)
    overdue = running_job("logs-tenant", "slow@host", 4343, timeout_s=2.0, max_attempts=2)
    later = utcnow() + seconds(60)
    presence.announce("slow@host", 4343, incarnation="test", held=[overdue.delivery_id], ttl_s=30)
    # the present worker keeps its job
    assert recover_stuck(later) == {"requeued": 1, "dead": 0, "stopped": 0, "lease_late": 1}
    assert enforce_timeouts(later) == {"requeued": 1, "dead": 0, "stopped": 0}
    unpublished = queued_job("logs-tenant")
    with db.begin() as conn:
        conn.execute(sa.update(jobs).where(jobs.c.id == unpublished.id).values(published_at=None))
    assert reconcile_broker(later)["unpublished"] == 1
    lines = _json_lines(json_log.getvalue())
    for job, worker, reason in [(lost, "ghost@nowhere", "worker_lost"), (overdue, "slow@host", "timed_out"),
                                (unpublished, None, "unpublished")]:  # fmt: skip
        [line] = [ln for ln in lines if str(job.id) in json.dumps(ln)]
        want = {"job_id": str(job.id), "tenant": "logs-tenant", "queue": job.queue, "reason": reason}
        assert {k: line.get(k) for k in want} == want, line
        assert line.get("worker") == worker, line
        if reason == "unpublished":  # the new delivery: the one the worker's lines will carry
            assert line["delivery_id"] == str(ledger_view.job(job.id).delivery_id) != str(job.delivery_id)
        else:
            assert line["delivery_id"] == str(job.delivery_id), line
