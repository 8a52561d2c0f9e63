"""Issue 18, item 8: a result over MEDIC_MAX_RESULT_BYTES fails its job with `result_too_large`,
at once and for good (the same function on the same args returns the same size), and nothing
oversized is written; a result at the cap is kept."""

from __future__ import annotations

import httpx

from tests.api_client import events, submit, wait_state
from worker.settings import get_settings


def test_a_result_over_the_cap_fails_the_job_without_retry(client: httpx.Client) -> None:
    limit = get_settings().max_result_bytes
    job = submit(client, "tests.sized", {"size": limit + 1}, max_attempts=3)
    done = wait_state(client, job["id"], timeout=20)
    assert done["state"] == "dead" and done["attempts"] == 1, done
    assert done["result"] is None
    error = done["error"]
    assert error["type"] == "result_too_large" and error["size"] == limit + 1 and error["limit"] == limit
    assert "MEDIC_MAX_RESULT_BYTES" in error["message"]
    [ended] = [e for e in events(client, job["id"]) if e["reason"] == "error"]
    assert ended["to_state"] == "dead" and ended["detail"] == "not retryable"


def test_a_result_at_the_cap_is_kept(client: httpx.Client) -> None:
    limit = get_settings().max_result_bytes
    job = submit(client, "tests.sized", {"size": limit})
    done = wait_state(client, job["id"], timeout=20)
    assert done["state"] == "succeeded", done
    assert len(done["result"]) == limit - 2
