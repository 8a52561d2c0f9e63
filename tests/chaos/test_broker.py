"""The broker (a private Redis, no persistence) restarts or goes down: nothing accepted is lost."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa

from tests.chaos.conftest import TERMINAL
from tests.conftest import KeyFactory, switched_env
from tests.ledger_view import assert_no_overlap
from tests.testjobs import executions
from worker.accept import JobRequest, enqueue_many
from worker.broker import inspect
from worker.control.reconcile import ACTOR as RECONCILE
from worker.ledger import db
from worker.ledger.models import job_events, jobs
from worker.ops.stack import PrivateRedis
from worker.testing.processes import Processes, wait_for


@pytest.fixture
def private_redis(private_ledger: dict[str, str]) -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    with switched_env({"MEDIC_REDIS_URL": server.url}):
        yield server
    server.stop()


def _states(ids: list[uuid.UUID]) -> dict[str, int]:
    with db.connect() as conn:
        rows = conn.execute(
            sa.select(jobs.c.state, sa.func.count()).where(jobs.c.id.in_(ids)).group_by(jobs.c.state)
        ).all()
    return {state: count for state, count in rows}


def _all_succeeded(ids: list[uuid.UUID]) -> bool:
    return _states(ids).get("succeeded", 0) == len(ids)


def _deliveries(ids: list[uuid.UUID], state: str | None = None) -> dict[uuid.UUID, str]:
    """Each job's current delivery id (of the jobs in `state`, if named)."""
    where = [jobs.c.id.in_(ids)] + ([jobs.c.state == state] if state else [])
    with db.connect() as conn:
        return {r.id: str(r.delivery_id) for r in conn.execute(sa.select(jobs.c.id, jobs.c.delivery_id).where(*where))}


def _resent(ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """The jobs reconcile_broker re-sent (queued -> queued with a fresh delivery id)."""
    with db.connect() as conn:
        rows = conn.execute(
            sa.select(job_events.c.job_id).where(job_events.c.job_id.in_(ids), job_events.c.actor == RECONCILE)
        ).all()
    return {r.job_id for r in rows}


def test_a_broker_restart_loses_no_queued_job(cprocs: Processes, private_redis: PrivateRedis) -> None:
    """Given 200 jobs queued on a running worker, When Redis restarts without persistence,
    Then every message the broker held before is gone, reconcile re-sends those jobs (a fresh
    delivery id each), the workers consume again, and all 200 succeed, none twice."""
    env = {"MEDIC_REDIS_URL": private_redis.url}
    cprocs.worker("chaos-broker", queues="chaos5", concurrency=2, **env)
    cprocs.control_plane(**env)
    tags = [uuid.uuid4().hex for _ in range(200)]
    done = enqueue_many(
        [JobRequest("tests.record", {"tag": t, "seconds": 0.05}, queue="chaos5") for t in tags], tenant="chaos"
    )
    ids = [d.job.id for d in done]
    wait_for(lambda: _states(ids).get("succeeded", 0) >= 20, 60, 0.05, "20 jobs done before the restart")
    queued = {d: j for j, d in _deliveries(ids, "queued").items()}
    held = inspect.delivery_ids(["chaos5"], 100_000, set(queued))  # waiting, or prefetched (unacked)
    assert held, "the broker holds messages of queued jobs before the restart"
    before = {queued[d]: d for d in held}

    private_redis.stop(keep_dir=True)
    private_redis.start()
    # a re-sent job has a fresh delivery id: none of the old ids can be back
    assert inspect.delivery_ids(["chaos5"], 100_000, set(held)) == set(), "the restart lost every message"

    wait_for(lambda: _all_succeeded(ids), 120, 0.2, "all 200 succeeded")
    resent, after = _resent(ids), _deliveries(ids)
    assert resent & set(before), "reconcile re-sent jobs whose messages the restart lost"
    # the rest of them ran from a worker's prefetch, under the delivery they had before
    assert {j for j in before if j not in resent and after[j] != before[j]} == set()
    assert {j for j in resent if after[j] in held} == set(), "a re-sent job runs under its new delivery"
    print(f"\n{len(held)} messages in the broker before the restart, 0 after; {len(resent & set(before))} re-sent")
    twice = [t for t in tags if len(executions(t)) != 1]
    assert twice == [], f"{len(twice)} jobs ran other than once"
    assert_no_overlap(ids)


def test_jobs_accepted_while_the_broker_is_down_run_when_it_is_back(
    cprocs: Processes, private_redis: PrivateRedis, make_key: KeyFactory
) -> None:
    """Given the stack on a Redis that is down, When 50 jobs are submitted over HTTP,
    Then each gets 202 (outbox), and all 50 succeed once Redis is back."""
    env = {"MEDIC_REDIS_URL": private_redis.url}
    _, url = cprocs.api("chaos-api", **env)
    cprocs.worker("chaos-outbox", queues="chaos6", concurrency=2, **env)
    cprocs.control_plane(**env)
    _, key = make_key()
    private_redis.stop(keep_dir=True)

    ids: list[uuid.UUID] = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        for i in range(50):
            response = client.post(
                "/jobs", json={"type": "examples.echo", "args": {"message": str(i)}, "queue": "chaos6"}
            )
            assert response.status_code == 202, response.text
            assert response.json()["published_at"] is None
            ids.append(uuid.UUID(response.json()["id"]))
    assert _states(ids) == {"queued": 50}

    private_redis.start()
    wait_for(lambda: _all_succeeded(ids), 120, 0.2, "all 50 succeeded")
    assert set(_states(ids)) <= {"succeeded"} | TERMINAL
    assert_no_overlap(ids)


def test_a_worker_holding_running_jobs_outlives_a_broker_outage(cprocs: Processes, private_redis: PrivateRedis) -> None:
    """Given a worker running a job (its message unacked: acks_late), When Redis goes down long
    enough for the consumer to lose its connection and comes back, Then the worker process is
    still the same one, logged no "Unrecoverable error" (kombu's restore of unacked messages
    on close used to raise AttributeError and Celery exited: worker/broker/kombu_fixes.py), and it
    consumes a job submitted after the outage."""
    env = {"MEDIC_REDIS_URL": private_redis.url}
    worker = cprocs.worker("chaos-outage", queues="chaos12", concurrency=2, **env)
    [running] = enqueue_many([JobRequest("examples.sleep", {"seconds": 6}, queue="chaos12")], tenant="chaos")
    wait_for(lambda: _states([running.job.id]) == {"running": 1}, 60, 0.05, "the job running")

    private_redis.stop(keep_dir=True)
    wait_for(lambda: "Connection to broker lost" in worker.log(), 60, 0.1, "the consumer seeing the outage")
    # Down for a few reconnect attempts, as in a real restart, not a blip.
    wait_for(lambda: worker.log().count("Cannot connect to") >= 2 or not worker.alive(), 60, 0.2, "reconnect tries")
    private_redis.start()

    [after] = enqueue_many([JobRequest("examples.echo", {"message": "after"}, queue="chaos12")], tenant="chaos")
    wait_for(lambda: _all_succeeded([after.job.id]) or not worker.alive(), 90, 0.1, "the job after the outage")
    assert "Unrecoverable error" not in worker.log(), worker.log()[-3000:]
    assert worker.alive(), "the worker exited during the broker outage"
    assert _all_succeeded([after.job.id])
    wait_for(lambda: _states([running.job.id]) == {"succeeded": 1}, 60, 0.1, "the job that ran through it")
    assert_no_overlap([running.job.id, after.job.id])
