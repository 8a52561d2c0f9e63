"""The HTTP API: validation, idempotency, tenants, cancel and retry, listing."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
import sqlalchemy as sa

from tests.api_client import events, submit, wait_state
from tests.conftest import KeyFactory
from tests.testjobs import executions
from worker.ledger import db
from worker.ledger.models import jobs
from worker.settings import get_settings
from worker.testing.processes import wait_for


def _rows(tenant: str) -> int:
    with db.connect() as conn:
        return int(conn.scalar(sa.select(sa.func.count()).select_from(jobs).where(jobs.c.tenant == tenant)) or 0)


BAD_INPUTS: list[tuple[str, dict[str, object], int, str]] = [
    ("unknown type", {"type": "examples.nope", "args": {}}, 422, "unknown_job_type"),
    ("missing arg", {"type": "examples.echo", "args": {}}, 422, "invalid_args"),
    ("extra arg", {"type": "examples.echo", "args": {"message": "x", "other": 1}}, 422, "invalid_args"),
    ("wrong type", {"type": "examples.sleep", "args": {"seconds": "soon"}}, 422, "invalid_args"),
    ("args not an object", {"type": "examples.echo", "args": ["x"]}, 422, "invalid_request"),
    ("unknown field", {"type": "examples.echo", "args": {"message": "x"}, "colour": "red"}, 422, "invalid_request"),
    (
        "priority out of range",
        {"type": "examples.echo", "args": {"message": "x"}, "priority": 10},
        422,
        "invalid_request",
    ),
    ("zero timeout", {"type": "examples.echo", "args": {"message": "x"}, "timeout": 0}, 422, "invalid_request"),
    ("no attempts", {"type": "examples.echo", "args": {"message": "x"}, "max_attempts": 0}, 422, "invalid_request"),
    ("args over the limit", {"type": "examples.echo", "args": {"message": "x" * 70_000}}, 413, "payload_too_large"),
]


@pytest.mark.parametrize(("body", "status", "code"), [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gets_a_clear_4xx_and_writes_nothing(
    client: httpx.Client, body: dict[str, object], status: int, code: str
) -> None:
    response = client.post("/jobs", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"] == code
    assert response.json()["message"]
    assert _rows(client.tenant) == 0  # type: ignore[attr-defined]


def test_malformed_json_is_422(client: httpx.Client) -> None:
    response = client.post("/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"


def test_request_over_the_body_limit_is_413_before_parsing(client: httpx.Client) -> None:
    huge = b'{"type": "examples.echo", "args": {"message": "' + b"x" * (get_settings().max_request_bytes + 10) + b'"}}'
    response = client.post("/jobs", content=huge, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"] == "request_too_large"
    assert _rows(client.tenant) == 0  # type: ignore[attr-defined]


def test_a_batch_with_one_bad_job_writes_none(client: httpx.Client) -> None:
    body = {"jobs": [{"type": "examples.echo", "args": {"message": "ok"}}, {"type": "examples.nope"}]}
    response = client.post("/jobs/batch", json=body)
    assert response.status_code == 422
    assert _rows(client.tenant) == 0  # type: ignore[attr-defined]


def test_batch_enqueues_all_in_one_go(client: httpx.Client) -> None:
    body = {"jobs": [{"type": "examples.echo", "args": {"message": str(i)}} for i in range(20)]}
    response = client.post("/jobs/batch", json=body)
    assert response.status_code == 202, response.text
    created = response.json()["jobs"]
    assert len(created) == 20
    for i, job in enumerate(created):
        assert wait_state(client, job["id"])["result"] == {"message": str(i)}


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "unauthorized"),
        ({"Authorization": "Bearer mk_nope"}, "unauthorized"),
        ({"Authorization": "Basic x"}, "unauthorized"),
    ],
)
def test_missing_or_invalid_key_is_401(stack: str, headers: dict[str, str], code: str) -> None:
    for method, path in [("POST", "/jobs"), ("GET", "/jobs"), ("GET", f"/jobs/{uuid.uuid4()}")]:
        response = httpx.request(method, stack + path, headers=headers, json={"type": "examples.echo"})
        assert response.status_code == 401, (method, path, response.text)
        assert response.json()["error"] == code
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_scopes_are_enforced(stack: str, make_key: KeyFactory) -> None:
    tenant, read_only = make_key("read")
    response = httpx.post(
        stack + "/jobs",
        json={"type": "examples.echo", "args": {"message": "x"}},
        headers={"Authorization": f"Bearer {read_only}"},
    )
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    assert _rows(tenant) == 0


def test_idempotency_key_returns_the_same_job(client: httpx.Client) -> None:
    body = {"type": "examples.echo", "args": {"message": "once"}}
    first = client.post("/jobs", json=body, headers={"Idempotency-Key": "order-42"})
    second = client.post("/jobs", json=body, headers={"Idempotency-Key": "order-42"})
    assert first.status_code == 202
    assert second.status_code == 200
    assert second.headers["Idempotent-Replayed"] == "true"
    assert first.json()["id"] == second.json()["id"]
    assert _rows(client.tenant) == 1  # type: ignore[attr-defined]
    conflict = client.post(
        "/jobs", json={"type": "examples.echo", "args": {"message": "other"}}, headers={"Idempotency-Key": "order-42"}
    )
    assert conflict.status_code == 409
    assert conflict.json()["error"] == "idempotency_conflict"
    assert _rows(client.tenant) == 1  # type: ignore[attr-defined]


def test_idempotency_keys_are_per_tenant(stack: str, make_key: KeyFactory) -> None:
    ids = []
    for _ in range(2):
        _, key = make_key()
        response = httpx.post(
            stack + "/jobs",
            json={"type": "examples.echo", "args": {"message": "x"}},
            headers={"Authorization": f"Bearer {key}", "Idempotency-Key": "same"},
        )
        assert response.status_code == 202
        ids.append(response.json()["id"])
    assert ids[0] != ids[1]


def test_a_tenant_never_sees_another_tenants_jobs(stack: str, make_key: KeyFactory) -> None:
    _, key_a = make_key()
    _, key_b = make_key()
    with (
        httpx.Client(base_url=stack, headers={"Authorization": f"Bearer {key_a}"}) as a,
        httpx.Client(base_url=stack, headers={"Authorization": f"Bearer {key_b}"}) as b,
    ):
        job = submit(a, "examples.sleep", {"seconds": 0.1}, queue="nobody-consumes-this")
        job_id = job["id"]
        for method, path in [("GET", f"/jobs/{job_id}"), ("GET", f"/jobs/{job_id}/events"),
                             ("POST", f"/jobs/{job_id}/cancel"), ("POST", f"/jobs/{job_id}/retry")]:  # fmt: skip
            response = b.request(method, path)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["error"] == "job_not_found"
        assert b.get("/jobs").json()["jobs"] == []
        assert [j["id"] for j in a.get("/jobs").json()["jobs"]] == [job_id]
        assert a.get(f"/jobs/{job_id}").json()["state"] == "queued", "B's cancel must not have touched it"


def test_cancel_a_queued_job(client: httpx.Client) -> None:
    job = submit(client, "examples.sleep", {"seconds": 0.1}, queue="nobody-consumes-this")
    response = client.post(f"/jobs/{job['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["state"] == "cancelled"
    again = client.post(f"/jobs/{job['id']}/cancel")
    assert again.status_code == 409
    assert again.json()["error"] == "invalid_state"


def test_cancel_a_running_job_asks_it_to_stop_and_its_worker_kills_it_after_the_grace(client: httpx.Client) -> None:
    """Cancelled while running: the answer is 202 with the job still running and the request's
    time; the job (which never asks `cancelled()`) is killed after the grace, well before its
    natural end, and ends `cancelled` (reason `stopped`) with no result and no end record."""
    tag = uuid.uuid4().hex
    job = submit(client, "tests.record", {"tag": tag, "seconds": 8})
    started = wait_for(lambda: executions(tag), 30, 0.05, "the job started")[0]
    response = client.post(f"/jobs/{job['id']}/cancel")
    assert response.status_code == 202
    assert response.json()["state"] == "running" and response.json()["cancel_requested_at"] is not None
    final = wait_state(client, job["id"], {"cancelled"}, timeout=30)
    assert time.time() < float(started["start"]) + 8, "it was not stopped before its natural end"
    assert final["result"] is None
    assert [e["reason"] for e in events(client, job["id"])][-2:] == ["cancel_requested", "stopped"]
    [run] = executions(tag)
    assert run["end"] == 0, "the worker was told to stop it, yet it ran to its end"


def test_retry_a_dead_job(client: httpx.Client) -> None:
    job = submit(client, "examples.fail", {}, max_attempts=1)
    assert wait_state(client, job["id"])["state"] == "dead"
    not_dead = submit(client, "examples.echo", {"message": "x"})
    wait_state(client, not_dead["id"])
    assert client.post(f"/jobs/{not_dead['id']}/retry").status_code == 409
    response = client.post(f"/jobs/{job['id']}/retry")
    assert response.status_code == 202
    assert response.json()["state"] == "queued" and response.json()["attempts"] == 0
    final = wait_state(client, job["id"])
    assert final["state"] == "dead" and final["attempts"] == 1
    reasons = [e["reason"] for e in events(client, job["id"])]
    assert reasons.count("claimed") == 2 and "manual_retry" in reasons


def test_list_filters_and_keyset_pagination(client: httpx.Client) -> None:
    for i in range(5):
        submit(client, "examples.echo", {"message": str(i)}, queue="nobody-consumes-this")
    submit(client, "examples.sleep", {"seconds": 0}, queue="nobody-consumes-this")
    page = client.get("/jobs", params={"type": "examples.echo", "limit": 2}).json()
    seen = [j["id"] for j in page["jobs"]]
    while page["next_cursor"]:
        page = client.get("/jobs", params={"type": "examples.echo", "limit": 2, "cursor": page["next_cursor"]}).json()
        seen += [j["id"] for j in page["jobs"]]
    assert len(seen) == len(set(seen)) == 5
    assert len(client.get("/jobs", params={"state": "queued"}).json()["jobs"]) == 6
    assert client.get("/jobs", params={"state": "bogus"}).status_code == 422
    assert client.get("/jobs", params={"cursor": "garbage"}).json()["error"] == "invalid_args"


def test_health_and_metrics(stack: str, client: httpx.Client) -> None:
    assert httpx.get(stack + "/health/live").json() == {"status": "ok"}
    ready = httpx.get(stack + "/health/ready")
    assert ready.status_code == 200, ready.text
    assert set(ready.json()["checks"]) >= {"ledger", "redis", "broker", "workers", "control"}
    assert ready.json()["checks"]["control"]["required"] is False, "no beat here: reported, not fatal"
    submit(client, "examples.echo", {"message": "m"}, queue="nobody-consumes-this")
    text = httpx.get(stack + "/metrics").text
    assert 'medic_jobs{queue="nobody-consumes-this",state="queued"}' in text
    assert "medic_jobs_accepted_total" in text
    assert "medic_api_request_seconds_bucket" in text


def test_openapi_docs_are_served(stack: str) -> None:
    assert httpx.get(stack + "/docs").status_code == 200
    spec = httpx.get(stack + "/openapi.json").json()
    assert {"/jobs", "/jobs/batch", "/jobs/{job_id}", "/jobs/{job_id}/events"} <= set(spec["paths"])
