"""One job through claim -> run -> finalize on an embedded worker in this test process, against the
real PostgreSQL and Redis: results, errors, retries and back-off, duplicate and stale deliveries.

Every check reads the ledger (the job's row and its events, per delivery), not what the job says
about itself. No prefork child here: crashes, hard time limits and revoke-terminate stay on real
`celery worker` processes (tests/runtime/test_jobs_run.py, tests/chaos)."""

from __future__ import annotations

import os
import uuid
from typing import Any

from sqlalchemy.engine import Row

from tests.ledger_view import assert_no_overlap, job
from tests.testjobs import executions
from worker.accept import enqueue
from worker.broker.inspect import depth
from worker.broker.publish import publish
from worker.ledger import db, queries
from worker.ledger.records import Job
from worker.settings import get_settings
from worker.testing.processes import wait_for

TERMINAL = {"succeeded", "dead", "cancelled"}


def finished(job_id: uuid.UUID, timeout: float = 30) -> Job:
    """The job's row once it is terminal."""
    return wait_for(lambda: (row := job(job_id)).state in TERMINAL and row, timeout, 0.02, f"job {job_id} finished")


def history(job_id: uuid.UUID) -> list[Row[Any]]:
    with db.connect() as conn:
        return list(queries.get_events(conn, job_id))


def test_enqueued_job_succeeds_with_its_result(inproc_worker: str) -> None:
    enqueued = enqueue("examples.echo", {"message": "hello"}, queue=inproc_worker)
    assert enqueued.job.state == "queued" and enqueued.job.published_at is not None
    done = finished(enqueued.job.id)
    assert done.state == "succeeded"
    assert done.result == {"message": "hello"}
    assert done.attempts == 1
    assert done.worker and done.worker_pid == os.getpid(), "run by the embedded worker of this process"
    assert done.started_at is not None and done.finished_at is not None
    assert done.started_at <= done.finished_at
    assert [(e.from_state, e.to_state) for e in history(done.id)] == [
        (None, "queued"),
        ("queued", "running"),
        ("running", "succeeded"),
    ]


def test_failing_job_is_retried_then_dead_with_every_attempt_recorded(inproc_worker: str) -> None:
    enqueued = enqueue("examples.fail", {"message": "boom"}, queue=inproc_worker, max_attempts=3)
    done = finished(enqueued.job.id)
    assert done.state == "dead"
    assert done.attempts == 3
    assert done.error is not None
    assert done.error["type"] == "RuntimeError"
    assert done.error["message"] == "boom"
    assert "Traceback" in done.error["traceback"]
    events = history(done.id)
    claims = [e for e in events if e.reason == "claimed"]
    assert [e.attempt for e in claims] == [1, 2, 3]
    assert len({e.delivery_id for e in claims}) == 3, "each attempt is a fresh delivery"
    assert [e.to_state for e in events if e.reason == "error"] == ["queued", "queued", "dead"]


def test_retries_wait_out_a_growing_back_off(inproc_worker: str) -> None:
    """Each retry is claimed no earlier than its back-off after the error (backoff_s * 2^(n-1)):
    the give-back's not_before reaches the message (eta) and the worker honours it."""
    enqueued = enqueue("examples.fail", {}, queue=inproc_worker, max_attempts=3)
    done = finished(enqueued.job.id)
    assert done.state == "dead" and done.backoff_s > 0
    events = history(done.id)
    errors = [e for e in events if e.reason == "error"]
    claims = [e for e in events if e.reason == "claimed"]
    cap = get_settings().max_backoff_seconds
    for n, (error, next_claim) in enumerate(zip(errors[:2], claims[1:], strict=True), start=1):
        assert error.to_state == "queued"
        assert error.delivery_id == next_claim.delivery_id, "the retry is the delivery the error created"
        delay = min(cap, done.backoff_s * 2 ** (n - 1))
        waited = (next_claim.at - error.at).total_seconds()
        # a few ms of slack: Celery's timer may fire an eta task marginally early
        assert waited >= delay - 0.02, f"retry {n} claimed {waited:.3f}s after its error, back-off {delay}s"


def test_job_that_fails_twice_then_succeeds(inproc_worker: str) -> None:
    tag = uuid.uuid4().hex
    enqueued = enqueue("tests.fail_then_succeed", {"tag": tag, "failures": 2}, queue=inproc_worker, max_attempts=5)
    done = finished(enqueued.job.id)
    assert done.state == "succeeded"
    assert done.attempts == 3
    assert done.result == "succeeded on attempt 3"


def test_a_message_delivered_twice_runs_the_job_once(inproc_worker: str) -> None:
    """Three messages, one delivery_id, two worker threads: one claim, one run."""
    tag = uuid.uuid4().hex
    enqueued = enqueue("tests.record", {"tag": tag, "seconds": 1.0}, queue=inproc_worker)
    row = job(enqueued.job.id)
    publish([row])  # the same delivery again, by hand
    publish([row])
    done = finished(row.id)
    assert done.state == "succeeded"
    assert done.attempts == 1
    assert len(executions(tag)) == 1
    claims = [e for e in history(row.id) if e.reason == "claimed"]
    assert [e.delivery_id for e in claims] == [row.delivery_id]


def test_a_stale_delivery_is_dropped(inproc_worker: str) -> None:
    """A message with an old delivery_id reaches the worker first, while the job is still queued:
    it must not run the job; the current delivery does, and it is the one the ledger claimed.
    (The job's own message went to a queue nobody consumes, so the order is ours to choose.)"""
    tag = uuid.uuid4().hex
    enqueued = enqueue("tests.record", {"tag": tag, "seconds": 0.5}, queue="nobody-consumes-this")
    row = job(enqueued.job.id)
    here = row.replace(queue=inproc_worker)
    publish([here.replace(delivery_id=uuid.uuid4())])
    wait_for(lambda: depth(inproc_worker) == 0, 10, 0.02, "the stale message taken")
    publish([here])
    done = finished(row.id)
    assert done.state == "succeeded" and done.attempts == 1
    assert len(executions(tag)) == 1
    assert [e.delivery_id for e in history(row.id) if e.reason == "claimed"] == [row.delivery_id]
    # each recorded execution ran under a delivery the ledger claimed (not the stale one)
    assert_no_overlap([row.id])


def test_library_enqueue_runs_on_the_workers(inproc_worker: str) -> None:
    done = enqueue("examples.echo", {"message": "from python"}, tenant=f"t-{uuid.uuid4().hex[:8]}", queue=inproc_worker)
    assert done.created and done.published
    assert finished(done.job.id).result == {"message": "from python"}
