"""Values JSONB refuses (NaN, Infinity, NUL in a string or key, a lone surrogate): in submitted
args a 422 with nothing written; in a result a job error `result_not_storable` at once, never a
job left `running` until its timeout."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from tests.api_client import events, submit, wait_state
from tests.ledger.make import a_new_job
from worker.clock import utcnow
from worker.ledger import db, queries, transitions
from worker.settings import get_settings


def any_payload(payload: str) -> str:
    """A raw body whose `payload` argument takes any JSON (the API parses NaN and Infinity)."""
    return '{"type": "tests.unstorable", "args": {"kind": "nan", "payload": ' + payload + "}}"


RAW_BODIES = {
    "nan": any_payload("NaN"),
    "nested_infinity": any_payload('{"a": [1, -Infinity]}'),
    "typed_float_infinity": '{"type": "tests.typed", "args": {"count": 1, "ratio": Infinity}}',
    "nul_in_string": '{"type": "examples.echo", "args": {"message": "a\\u0000b"}}',
    "nul_in_key": any_payload('{"k\\u0000": 1}'),
    "lone_surrogate": '{"type": "examples.echo", "args": {"message": "\\ud800"}}',
}


@pytest.mark.parametrize("name", sorted(RAW_BODIES))
def test_unstorable_args_are_a_422_and_nothing_is_written(client: httpx.Client, name: str) -> None:
    response = client.post("/jobs", content=RAW_BODIES[name], headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_args"
    assert [p["loc"].startswith(("message", "ratio", "payload")) for p in body["problems"]] == [True], body
    assert client.get("/jobs").json()["jobs"] == [], "a refused job must not be written"


def test_unstorable_args_in_a_batch_refuse_the_whole_batch(client: httpx.Client) -> None:
    good = '{"type": "examples.echo", "args": {"message": "ok"}}'
    raw = '{"jobs": [' + good + ", " + any_payload("NaN") + "]}"
    response = client.post("/jobs/batch", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert client.get("/jobs").json()["jobs"] == []


@pytest.mark.parametrize("kind", ["nan", "inf", "nul", "nul_key"])
def test_an_unstorable_result_ends_the_job_at_once(client: httpx.Client, kind: str) -> None:
    """The job would otherwise stay `running` until its 60 s timeout: dead within 20 s."""
    started = time.monotonic()
    job = submit(client, "tests.unstorable", {"kind": kind}, max_attempts=1, timeout=60)
    done = wait_state(client, job["id"], timeout=20)
    assert done["state"] == "dead", done
    assert done["error"]["type"] == "result_not_storable"
    assert done["result"] is None
    assert time.monotonic() - started < 20


def test_an_unstorable_result_is_retried_like_any_job_error(client: httpx.Client) -> None:
    job = submit(client, "tests.unstorable", {"kind": "nul"}, max_attempts=2, timeout=60)
    done = wait_state(client, job["id"], timeout=20)
    assert done["state"] == "dead" and done["attempts"] == 2
    assert [e["to_state"] for e in events(client, job["id"]) if e["reason"] == "error"] == ["queued", "dead"]


def test_a_data_error_at_finalize_is_recorded_as_a_job_error(medic_env: dict[str, str]) -> None:
    """A result the ledger refuses though no check caught it (the check is bypassed here): the
    DataError becomes the job's error, it does not escape and leave the row `running`."""
    from worker.runtime.outcome import Outcome
    from worker.runtime.task import record_outcome

    s = get_settings()
    new = a_new_job(f"t{uuid.uuid4().hex[:8]}", timeout_s=60.0, max_attempts=1)
    with db.begin() as conn:  # written, never published: no worker can take it
        [created] = transitions.create_jobs(conn, [new], actor="test", now=utcnow())
        claimed = transitions.claim(
            conn, created.id, created.delivery_id, worker="test", pid=0, now=utcnow(), lease_s=s.lease_seconds
        )
    assert claimed is not None
    after = record_outcome(claimed, Outcome.succeeded({"x": float("nan")}), actor="test")
    assert after is not None and after.state == "dead"
    with db.connect() as conn:
        stored = queries.get_job(conn, created.id)
    assert stored is not None and stored.state == "dead"
    assert stored.error is not None and stored.error["type"] == "result_not_storable"
