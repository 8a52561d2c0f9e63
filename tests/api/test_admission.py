"""The admission gate of real API processes: 429 + Retry-After at the watermark, critical
headroom, tenant quotas, the in-flight bound."""

from __future__ import annotations

import json
import threading
import uuid

import httpx
import sqlalchemy as sa

from tests.conftest import KeyFactory
from worker.ledger import db
from worker.ledger.models import jobs
from worker.testing.processes import Processes


def _queued(queue: str) -> int:
    with db.connect() as conn:
        return int(conn.scalar(sa.select(sa.func.count()).select_from(jobs).where(jobs.c.queue == queue)) or 0)


def _client(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _job(queue: str, priority: int = 0) -> dict[str, object]:
    return {"type": "examples.echo", "args": {"message": "x"}, "queue": queue, "priority": priority}


def test_a_full_queue_answers_429_with_retry_after_and_writes_nothing(procs: Processes, make_key: KeyFactory) -> None:
    queue = f"gate-{uuid.uuid4().hex[:6]}"  # nobody consumes it: it only fills
    _, url = procs.api("api-gate", MEDIC_QUEUE_WATERMARKS=json.dumps({queue: [20, 10]}))
    _, key = make_key()
    with _client(url, key) as client:
        for _ in range(20):
            assert client.post("/jobs", json=_job(queue)).status_code == 202
        refused = client.post("/jobs", json=_job(queue))
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        body = refused.json()
        assert body["error"] == "queue_full"
        assert body["queue"] == queue and body["depth"] == 20 and body["high_watermark"] == 20
        assert _queued(queue) == 20

        # critical jobs get the headroom up to the hard limit (20 + max(10 %, 20) = 40), no further
        for _ in range(20):
            assert client.post("/jobs", json=_job(queue, priority=9)).status_code == 202
        assert client.post("/jobs", json=_job(queue, priority=9)).status_code == 429
        assert _queued(queue) == 40

        batch = client.post("/jobs/batch", json={"jobs": [_job(queue) for _ in range(3)]})
        assert batch.status_code == 429 and _queued(queue) == 40, "a batch is admitted whole or not at all"

        other = client.post("/jobs", json=_job(f"{queue}-other"))
        assert other.status_code == 202, "only the full queue sheds"

        assert f'medic_jobs_rejected_total{{queue="{queue}",reason="queue_full"}} 3.0' in client.get("/metrics").text
        report = {q["queue"]: q for q in client.get("/queues").json()["queues"]}
        assert report[queue]["depth"] == 40
        assert report[queue]["ready"] == 40
        assert report[queue]["high_watermark"] == 20 and report[queue]["hard_limit"] == 40


def test_a_tenant_over_its_quota_is_refused_alone(procs: Processes, make_key: KeyFactory) -> None:
    queue = f"quota-{uuid.uuid4().hex[:6]}"
    _, url = procs.api("api-quota", MEDIC_TENANT_QUEUED_QUOTA="3")
    _, key_a = make_key()
    _, key_b = make_key()
    with _client(url, key_a) as a, _client(url, key_b) as b:
        for _ in range(3):
            assert a.post("/jobs", json=_job(queue)).status_code == 202
        refused = a.post("/jobs", json=_job(queue))
        assert refused.status_code == 429
        assert refused.json()["error"] == "tenant_quota"
        assert refused.headers["Retry-After"]
        assert b.post("/jobs", json=_job(queue)).status_code == 202


def test_beyond_the_inflight_bound_the_api_answers_503_fast(procs: Processes, make_key: KeyFactory) -> None:
    queue = f"inflight-{uuid.uuid4().hex[:6]}"
    _, url = procs.api("api-inflight", MEDIC_API_MAX_INFLIGHT="1")
    _, key = make_key()
    statuses: list[int] = []
    retry_after: list[str] = []

    def post_batches() -> None:
        with _client(url, key) as client:
            for _ in range(5):
                response = client.post("/jobs/batch", json={"jobs": [_job(queue) for _ in range(300)]})
                statuses.append(response.status_code)
                if response.status_code == 503:
                    retry_after.append(response.headers["Retry-After"])

    threads = [threading.Thread(target=post_batches) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 202 in statuses
    assert 503 in statuses, "four clients against a bound of one must see refusals"
    assert set(statuses) <= {202, 503}
    assert retry_after and all(r == "1" for r in retry_after)
    assert httpx.get(url + "/health/live").status_code == 200
    assert _queued(queue) == 300 * statuses.count(202)
