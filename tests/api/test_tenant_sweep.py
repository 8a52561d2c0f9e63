"""Every route that takes a job id, called with tenant B's key on tenant A's job: 404, and the
job is exactly as it was. Routes are read from the OpenAPI, so a new route is swept too."""

from __future__ import annotations

from typing import Any

import httpx

from tests.api_client import events, submit, wait_state
from tests.conftest import KeyFactory


def _job_routes(client: httpx.Client) -> list[tuple[str, str]]:
    spec = client.get("/openapi.json").json()
    return [
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        if "{job_id}" in path
        for method in operations
    ]


def test_another_tenants_job_is_404_on_every_job_route_and_nothing_changes(
    client: httpx.Client, stack: str, make_key: KeyFactory
) -> None:
    dead = submit(client, "examples.fail", {"message": "x"}, max_attempts=1)
    dead = wait_state(client, dead["id"], {"dead"})
    before: dict[str, Any] = client.get(f"/jobs/{dead['id']}").json()
    history = events(client, dead["id"])

    routes = _job_routes(client)
    assert {("GET", "/jobs/{job_id}"), ("POST", "/jobs/{job_id}/cancel"), ("POST", "/jobs/{job_id}/retry")} <= set(
        routes
    ), routes
    _, other_key = make_key("submit,read,admin")
    with httpx.Client(base_url=stack, headers={"Authorization": f"Bearer {other_key}"}, timeout=15) as other:
        for method, path in routes:
            response = other.request(method, path.replace("{job_id}", dead["id"]))
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["error"] == "job_not_found", (method, path, response.text)

    assert client.get(f"/jobs/{dead['id']}").json() == before
    assert events(client, dead["id"]) == history
