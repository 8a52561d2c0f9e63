"""Issue 18, item 8: a list leaves out each job's args and result unless `fields=` asks for them
(a page of 500 jobs with 64 KB args cost the API process hundreds of MB), and a page that asks
holds at most 50 jobs; `GET /jobs/{id}` stays whole."""

from __future__ import annotations

import uuid

import httpx
import pytest

from api.routes.jobs import FULL_PAGE_MAX
from tests.api_client import submit, wait_state
from tests.ledger.make import a_new_job
from worker.clock import utcnow
from worker.ledger import db, queries, transitions


def _listed(client: httpx.Client, **params: object) -> dict[str, object]:
    response = client.get("/jobs", params=params)
    assert response.status_code == 200, response.text
    [job] = response.json()["jobs"]
    return dict(job)


def test_a_list_carries_args_and_result_only_when_asked(client: httpx.Client) -> None:
    job = submit(client, "examples.echo", {"message": "listed"})
    wait_state(client, job["id"], {"succeeded"})

    plain = _listed(client)
    assert plain["id"] == job["id"] and plain["state"] == "succeeded"
    assert "args" not in plain and "result" not in plain, plain
    assert _listed(client, fields="args")["args"] == {"message": "listed"}
    assert "result" not in _listed(client, fields="args")
    both = _listed(client, fields="args,result")
    assert both["args"] == {"message": "listed"} and both["result"] == {"message": "listed"}
    whole = client.get(f"/jobs/{job['id']}").json()
    assert whole["args"] == {"message": "listed"} and whole["result"] == {"message": "listed"}


@pytest.mark.parametrize("fields", ["error", "args,secret", "ARGS"])
def test_an_unknown_field_is_a_422(client: httpx.Client, fields: str) -> None:
    response = client.get("/jobs", params={"fields": fields})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_args"
    assert "fields=" in response.json()["message"]


def test_a_page_with_args_holds_at_most_the_full_page_limit(client: httpx.Client) -> None:
    assert client.get("/jobs", params={"fields": "args", "limit": FULL_PAGE_MAX}).status_code == 200
    refused = client.get("/jobs", params={"fields": "result", "limit": FULL_PAGE_MAX + 1})
    assert refused.status_code == 422 and refused.json()["limit"] == FULL_PAGE_MAX, refused.text
    assert client.get("/jobs", params={"limit": 500}).status_code == 200  # without fields, as before


def test_the_ledger_read_leaves_payloads_in_the_database(medic_env: dict[str, str]) -> None:
    """The columns are not fetched at all (not fetched, then dropped): a page costs its ids."""
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    with db.begin() as conn:
        transitions.create_jobs(conn, [a_new_job(tenant, args={"message": "m" * 1000})], actor="t", now=utcnow())
        [bare] = queries.list_jobs(conn, tenant, payloads=())
        [full] = queries.list_jobs(conn, tenant)
    assert bare.args is None and bare.result is None and bare.state == "queued"
    assert full.args == {"message": "m" * 1000}
