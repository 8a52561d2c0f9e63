"""Jobs whose point is a real prefork child run on real `celery worker` processes: a child that
dies mid-job, a job killed at its hard time limit. The rest of claim -> run -> finalize (results,
errors, retries, back-off, duplicate and stale deliveries) runs on an embedded worker:
tests/runtime/test_inprocess.py."""

from __future__ import annotations

import httpx

from tests.api_client import events, submit, wait_state


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
