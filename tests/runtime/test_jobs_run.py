"""Jobs submitted over HTTP run on real `celery worker` processes and end in the ledger."""

from __future__ import annotations

import uuid

import httpx

from tests.api_client import events, submit, wait_state
from tests.testjobs import executions
from worker.broker.publish import send
from worker.ledger import db, queries
from worker.submit import enqueue


def test_submitted_job_succeeds_with_its_result(client: httpx.Client) -> None:
    job = submit(client, "examples.echo", {"message": "hello"})
    assert job["state"] == "queued" and job["published_at"] is not None
    done = wait_state(client, job["id"])
    assert done["state"] == "succeeded"
    assert done["result"] == {"message": "hello"}
    assert done["attempts"] == 1
    assert done["worker"] and done["worker_pid"]
    assert done["started_at"] <= done["finished_at"]
    assert [(e["from_state"], e["to_state"]) for e in events(client, job["id"])] == [
        (None, "queued"),
        ("queued", "running"),
        ("running", "succeeded"),
    ]


def test_failing_job_is_retried_then_dead_with_every_attempt_recorded(client: httpx.Client) -> None:
    job = submit(client, "examples.fail", {"message": "boom"}, max_attempts=3)
    done = wait_state(client, job["id"])
    assert done["state"] == "dead"
    assert done["attempts"] == 3
    assert done["error"]["type"] == "RuntimeError"
    assert done["error"]["message"] == "boom"
    assert "Traceback" in done["error"]["traceback"]
    history = events(client, job["id"])
    claims = [e for e in history if e["reason"] == "claimed"]
    assert [e["attempt"] for e in claims] == [1, 2, 3]
    assert len({e["delivery_id"] for e in claims}) == 3, "each attempt is a fresh delivery"
    assert [e["to_state"] for e in history if e["reason"] == "error"] == ["queued", "queued", "dead"]


def test_job_that_fails_twice_then_succeeds(client: httpx.Client) -> None:
    tag = uuid.uuid4().hex
    job = submit(client, "tests.fail_then_succeed", {"tag": tag, "failures": 2}, max_attempts=5)
    done = wait_state(client, job["id"])
    assert done["state"] == "succeeded"
    assert done["attempts"] == 3
    assert done["result"] == "succeeded on attempt 3"


def test_a_message_delivered_twice_runs_the_job_once(client: httpx.Client, medic_env: dict[str, str]) -> None:
    tag = uuid.uuid4().hex
    job = submit(client, "tests.record", {"tag": tag, "seconds": 1.0})
    with db.connect() as conn:
        row = queries.get_job(conn, uuid.UUID(job["id"]))
    send(row)  # the same delivery again, by hand: two messages, one delivery_id
    send(row)
    done = wait_state(client, job["id"])
    assert done["state"] == "succeeded"
    assert done["attempts"] == 1
    assert len(executions(tag)) == 1
    assert [e["reason"] for e in events(client, job["id"])].count("claimed") == 1


def test_a_stale_delivery_is_dropped(client: httpx.Client, medic_env: dict[str, str]) -> None:
    tag = uuid.uuid4().hex
    job = submit(client, "tests.record", {"tag": tag, "seconds": 0.5})
    with db.connect() as conn:
        row = queries.get_job(conn, uuid.UUID(job["id"]))
    assert row is not None
    stale = row._asdict() | {"delivery_id": uuid.uuid4()}
    send(type("StaleRow", (), stale)())
    done = wait_state(client, job["id"])
    assert done["state"] == "succeeded" and done["attempts"] == 1
    assert len(executions(tag)) == 1


def test_library_enqueue_runs_on_the_workers(client: httpx.Client, medic_env: dict[str, str]) -> None:
    done = enqueue("examples.echo", {"message": "from python"}, tenant=client.tenant)  # type: ignore[attr-defined]
    assert done.created and done.published
    finished = wait_state(client, str(done.job.id))
    assert finished["result"] == {"message": "from python"}


def test_crashing_job_is_dead_after_max_attempts(client: httpx.Client) -> None:
    """examples.crash kills its prefork child each time; the main process reports the loss."""
    job = submit(client, "examples.crash", {}, max_attempts=2)
    done = wait_state(client, job["id"], timeout=60)
    assert done["state"] == "dead"
    assert done["attempts"] == 2
    assert done["error"]["type"] == "WorkerLost"
    lost = [e for e in events(client, job["id"]) if e["reason"] == "worker_lost"]
    assert [e["to_state"] for e in lost] == ["queued", "dead"]


def test_hanging_job_is_killed_at_its_hard_time_limit(client: httpx.Client) -> None:
    job = submit(client, "examples.hang", {}, timeout=1, max_attempts=2)
    done = wait_state(client, job["id"], timeout=60)
    assert done["state"] == "dead"
    assert done["attempts"] == 2
    timeline = [(e["from_state"], e["to_state"], e["reason"]) for e in events(client, job["id"])]
    assert timeline.count(("running", "timed_out", "timeout")) == 2
    assert ("timed_out", "dead", "timeout") in timeline
