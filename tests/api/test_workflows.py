"""POST /workflows and GET /workflows/{id} against the shared stack (a real API and worker):
a bad DAG or step is a 422 with nothing written, a tenant sees only its own workflows, and a
chord runs to the end with its results passed and every step's transition on the stream."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.api.test_stream import open_stream, subscribed
from tests.api.test_stream import recv as ws_recv
from tests.conftest import KeyFactory
from worker.ledger import db
from worker.ledger.models import jobs, workflow_steps, workflows
from worker.testing.processes import wait_for


def step(name: str, after: list[str] | None = None, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "type": "examples.echo", "args": {"message": name}}
    if after:
        body["after"] = after
    body.update(fields)
    return body


def _written(tenant: str) -> tuple[int, int, int]:
    """Rows of this tenant in workflows and jobs, and workflow_steps rows of its workflows."""
    with db.connect() as conn:
        n_workflows = conn.scalar(sa.select(sa.func.count()).select_from(workflows).where(workflows.c.tenant == tenant))
        n_jobs = conn.scalar(sa.select(sa.func.count()).select_from(jobs).where(jobs.c.tenant == tenant))
        n_steps = conn.scalar(
            sa.select(sa.func.count())
            .select_from(workflow_steps.join(workflows, workflows.c.id == workflow_steps.c.workflow_id))
            .where(workflows.c.tenant == tenant)
        )
    return int(n_workflows or 0), int(n_jobs or 0), int(n_steps or 0)


BAD = {
    "unknown_after": ([step("a"), step("b", ["nope"])], "invalid_workflow"),
    "cycle": ([step("a", ["c"]), step("b", ["a"]), step("c", ["b"])], "invalid_workflow"),
    "self_cycle": ([step("a", ["a"])], "invalid_workflow"),
    "duplicate_names": ([step("a"), step("a")], "invalid_workflow"),
    "too_many_steps": ([step(f"s{i}") for i in range(1001)], "invalid_workflow"),
    "unknown_type": ([step("a"), step("b", ["a"], type="no.such.type")], "unknown_job_type"),
    "bad_args": ([step("a"), step("b", ["a"], args={"wrong": 1})], "invalid_args"),
    "results_not_declared": ([step("a"), step("b", ["a"], wants_results=True)], "invalid_args"),
    "results_set_by_caller": (
        [step("a"), {"name": "m", "type": "examples.merge", "args": {"results": {}}, "after": ["a"]}],
        "invalid_args",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_workflow_is_422_and_writes_nothing(client: httpx.Client, case: str) -> None:
    steps, code = BAD[case]
    response = client.post("/workflows", json={"steps": steps})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == code, response.text
    assert _written(client.tenant) == (0, 0, 0)  # type: ignore[attr-defined]


def test_a_bad_step_is_named_in_the_error(client: httpx.Client) -> None:
    response = client.post("/workflows", json={"steps": [step("a"), step("b", ["a"], args={"wrong": 1})]})
    assert response.status_code == 422
    assert response.json()["step"] == "b"
    response = client.post("/workflows", json={"steps": [step("a"), step("b", ["a"], wants_results=True)]})
    assert "declares no `results` parameter" in response.json()["message"], response.text


def test_an_unknown_failure_policy_is_422(client: httpx.Client) -> None:
    response = client.post("/workflows", json={"steps": [step("a")], "failure_policy": "sometimes"})
    assert response.status_code == 422
    assert _written(client.tenant) == (0, 0, 0)  # type: ignore[attr-defined]


def test_another_tenants_workflow_is_404(client: httpx.Client, stack: str, make_key: KeyFactory) -> None:
    response = client.post("/workflows", json={"steps": [step("a", queue="nobody-consumes-this")]})
    assert response.status_code == 202, response.text
    workflow_id = response.json()["id"]
    _, other = make_key()
    with httpx.Client(base_url=stack, headers={"Authorization": f"Bearer {other}"}, timeout=15) as intruder:
        seen = intruder.get(f"/workflows/{workflow_id}")
        assert seen.status_code == 404 and seen.json()["error"] == "workflow_not_found"
        assert intruder.get("/jobs", params={"workflow_id": workflow_id}).json()["jobs"] == []
    assert client.get(f"/workflows/{workflow_id}").status_code == 200
    assert client.get(f"/workflows/{uuid.uuid4()}").status_code == 404
    mine = client.get("/jobs", params={"workflow_id": workflow_id}).json()["jobs"]
    assert [j["step"] for j in mine] == ["a"]
    assert client.get("/jobs", params={"workflow_id": str(uuid.uuid4())}).json()["jobs"] == []


def test_a_chord_runs_to_the_end_with_results_passed_and_its_steps_on_the_stream(
    client: httpx.Client, stack: str, make_key: KeyFactory
) -> None:
    """Given fetch-eu and fetch-us, then merge asking for their results, When it is submitted
    over the API, Then merge runs after both, gets both results, GET /workflows/{id} shows every
    step succeeded, and the stream carries each step's transitions with the workflow id."""
    key = client.headers["Authorization"].removeprefix("Bearer ")
    with open_stream(stack, key) as ws:
        subscribed(ws)
        body = {
            "name": "tour",
            "steps": [
                step("fetch-eu"),
                step("fetch-us"),
                {"name": "merge", "type": "examples.merge", "after": ["fetch-eu", "fetch-us"], "wants_results": True},
            ],
        }
        response = client.post("/workflows", json=body)
        assert response.status_code == 202, response.text
        accepted = response.json()
        assert response.headers["Location"] == f"/workflows/{accepted['id']}"
        assert {s["name"]: s["state"] for s in accepted["steps"]}["merge"] == "waiting"

        def done() -> dict[str, Any] | None:
            got = client.get(f"/workflows/{accepted['id']}").json()
            return got if got["state"] != "running" else None

        final = wait_for(done, 30, 0.1, "workflow finished")
        assert final["state"] == "succeeded"
        by_name = {s["name"]: s for s in final["steps"]}
        assert {n: s["state"] for n, s in by_name.items()} == dict.fromkeys(by_name, "succeeded")
        merge = client.get(f"/jobs/{by_name['merge']['job_id']}").json()
        assert merge["result"] == {"merged": {"fetch-eu": {"message": "fetch-eu"}, "fetch-us": {"message": "fetch-us"}}}
        assert merge["workflow_id"] == accepted["id"] and merge["step"] == "merge"
        for pred in ("fetch-eu", "fetch-us"):
            assert by_name[pred]["finished_at"] <= by_name["merge"]["started_at"]
        listed = client.get("/jobs", params={"workflow_id": accepted["id"]}).json()["jobs"]
        assert sorted(j["step"] for j in listed) == ["fetch-eu", "fetch-us", "merge"]

        seen: list[dict[str, Any]] = []

        def merge_succeeded_on_stream() -> bool:
            seen.append(ws_recv(ws))
            return any(m.get("step") == "merge" and m["to_state"] == "succeeded" for m in seen)

        wait_for(merge_succeeded_on_stream, 30, 0, "merge's success on the stream")
    steps_seen = {(m["step"], m["from_state"], m["to_state"]) for m in seen if m.get("workflow_id") == accepted["id"]}
    assert ("merge", "waiting", "queued") in steps_seen
    assert ("fetch-eu", "running", "succeeded") in steps_seen


def test_the_workflow_routes_are_in_the_openapi_with_an_example(stack: str) -> None:
    spec = httpx.get(stack + "/openapi.json").json()
    assert {"/workflows", "/workflows/{workflow_id}"} <= set(spec["paths"])
    body = spec["paths"]["/workflows"]["post"]["requestBody"]["content"]["application/json"]
    [example] = body["examples"].values()
    assert [st["name"] for st in example["value"]["steps"]] == ["fetch-eu", "fetch-us", "merge"]


def test_a_waiting_step_and_then_a_whole_workflow_are_cancelled_over_the_api(client: httpx.Client) -> None:
    """Given a parked a -> b -> c (fail_fast), When b (waiting) is cancelled alone, Then c, which
    waits for it, is cancelled in the same transaction (no repair loop); When the workflow is
    then cancelled by `POST /jobs/cancel {workflow_id}`, Then a goes too and the workflow is
    finished `cancelled` by that same call."""
    body = {"steps": [step("a", queue="nobody-consumes-this"), step("b", ["a"]), step("c", ["b"])]}
    accepted = client.post("/workflows", json=body).json()
    ids = {s["name"]: s["job_id"] for s in accepted["steps"]}

    def states() -> dict[str, str]:
        return {s["name"]: s["state"] for s in client.get(f"/workflows/{accepted['id']}").json()["steps"]}

    one = client.post(f"/jobs/{ids['b']}/cancel")
    assert one.status_code == 200 and one.json()["state"] == "cancelled", one.text
    assert states() == {"a": "queued", "b": "cancelled", "c": "cancelled"}
    assert [e["reason"] for e in client.get(f"/jobs/{ids['c']}/events").json()["events"]][-1] == "workflow_failed"
    bulk = client.post("/jobs/cancel", json={"workflow_id": accepted["id"]})
    assert bulk.status_code == 200, bulk.text
    assert bulk.json()["cancelled"] == 1  # a (queued); b and c were already cancelled
    assert states() == dict.fromkeys("abc", "cancelled")
    assert client.get(f"/workflows/{accepted['id']}").json()["state"] == "cancelled"
