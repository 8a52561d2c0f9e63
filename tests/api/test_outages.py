"""Outages at enqueue time: the broker down (accept, publish later) and the ledger down (503)."""

from __future__ import annotations

import httpx

from tests.conftest import KeyFactory
from worker.ops.stack import PrivateRedis
from worker.testing.processes import Processes, free_port


def test_broker_down_still_accepts_and_leaves_the_job_for_reconcile(
    procs: Processes, private_redis: PrivateRedis, make_key: KeyFactory
) -> None:
    """Given an API whose broker is down, When a job is submitted, Then it is accepted (202) and
    stays queued with no published_at, so the reconcile loop publishes it later."""
    _, url = procs.api("api-redis-down", MEDIC_REDIS_URL=private_redis.url)
    _, key = make_key()
    private_redis.stop(keep_dir=True)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        response = client.post("/jobs", json={"type": "examples.echo", "args": {"message": "kept"}})
        assert response.status_code == 202, response.text
        job = response.json()
        assert job["state"] == "queued"
        assert job["published_at"] is None
        stored = client.get(f"/jobs/{job['id']}").json()
        assert stored["state"] == "queued" and stored["published_at"] is None
        ready = client.get("/health/ready")  # the outbox covers Redis: still ready (tests/api/test_health.py)
        assert ready.status_code == 200
        redis_check = ready.json()["checks"]["redis"]
        assert redis_check["ok"] is False and redis_check["required"] is False


def test_ledger_down_answers_503_with_retry_after(procs: Processes, make_key: KeyFactory) -> None:
    """Given an API whose ledger does not answer, When a job is submitted, Then 503 + Retry-After."""
    dead_ledger = f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/medic"
    _, url = procs.api("api-ledger-down", MEDIC_DATABASE_URL=dead_ledger)
    _, key = make_key()
    response = httpx.post(
        url + "/jobs",
        json={"type": "examples.echo", "args": {"message": "x"}},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "ledger_unavailable"
    assert int(response.headers["Retry-After"]) > 0
    assert httpx.get(url + "/health/live").status_code == 200
    assert httpx.get(url + "/health/ready").status_code == 503
