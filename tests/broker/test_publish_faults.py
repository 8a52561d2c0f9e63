"""A broker that fails AFTER the commit, with a warm producer pool: the job is accepted (202),
marked unpublished, and the next reconcile sends it.

The pool must be warm: with a cold pool the error comes from connecting (an OperationalError);
with a warm one kombu's batch fails at flush with `BatchPublishError`, a `KombuError` that is no
OperationalError, which once escaped publish() as a 500.
"""

from __future__ import annotations

import uuid

import httpx

from tests.conftest import KeyFactory, switched_env
from worker.accept import enqueue
from worker.broker import inspect
from worker.clock import utcnow
from worker.control.reconcile import never_published
from worker.ledger import db, queries
from worker.ops.stack import PrivateRedis
from worker.testing.processes import Processes


def _stored(job_id: uuid.UUID) -> tuple[str, object, uuid.UUID]:
    with db.connect() as conn:
        row = queries.get_job(conn, job_id)
    assert row is not None
    return row.state, row.published_at, row.delivery_id


def test_publish_with_a_warm_pool_marks_the_job_unpublished(
    private_ledger: dict[str, str], private_redis: PrivateRedis
) -> None:
    """Given a producer pool that has already published, When Redis stops and a job is enqueued,
    Then enqueue returns (no exception) with published=False and published_at NULL in the ledger."""
    with switched_env({"MEDIC_REDIS_URL": private_redis.url}):
        first = enqueue("examples.echo", {"message": "warm"})
        assert first.published, "the first publish warms the pool and must land"
        private_redis.stop(keep_dir=True)
        second = enqueue("examples.echo", {"message": "after outage"})
        assert not second.published
        state, published_at, _ = _stored(second.job.id)
        assert state == "queued" and published_at is None, "reconcile finds only jobs with published_at NULL"


def test_api_answers_202_after_a_warm_pool_outage_and_reconcile_sends_it(
    procs: Processes, private_ledger: dict[str, str], private_redis: PrivateRedis, make_key: KeyFactory
) -> None:
    """Given an API that has already published once (warm pool), When its Redis stops and a job is
    submitted, Then 202 with published_at null, the ledger agrees, and once Redis is back the
    next reconcile pass puts the job's message in the queue."""
    env = {k: v for k, v in private_ledger.items() if k.startswith("MEDIC_") and k != "MEDIC_REDIS_URL"}
    _, url = procs.api("api-warm-outage", **{**env, "MEDIC_REDIS_URL": private_redis.url})
    _, key = make_key()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        warm = client.post("/jobs", json={"type": "examples.echo", "args": {"message": "warm"}})
        assert warm.status_code == 202 and warm.json()["published_at"] is not None, warm.text
        private_redis.stop(keep_dir=True)
        response = client.post("/jobs", json={"type": "examples.echo", "args": {"message": "kept"}})
        assert response.status_code == 202, response.text
        job = response.json()
        assert job["state"] == "queued" and job["published_at"] is None
        stored = client.get(f"/jobs/{job['id']}").json()
        assert stored["state"] == "queued" and stored["published_at"] is None

        private_redis.start()  # same port, empty
        again = client.post("/jobs", json={"type": "examples.echo", "args": {"message": "back"}})
        assert again.status_code == 202 and again.json()["published_at"] is not None, "the pool must recover"

    with switched_env({"MEDIC_REDIS_URL": private_redis.url}):
        assert never_published(utcnow(), 100) >= 1
        state, published_at, delivery_id = _stored(uuid.UUID(job["id"]))
        assert state == "queued" and published_at is not None
        present = inspect.delivery_ids({"default"}, 1000)
        assert present is not None and str(delivery_id) in present, "reconcile must put the message in the queue"
