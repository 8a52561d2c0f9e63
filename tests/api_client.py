from __future__ import annotations

from typing import Any

import httpx

from worker.testing.processes import wait_for

TERMINAL = {"succeeded", "dead", "cancelled"}


def submit(client: httpx.Client, type_: str, args: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    response = client.post("/jobs", json={"type": type_, "args": args or {}, **fields})
    assert response.status_code == 202, response.text
    return dict(response.json())


def wait_state(
    client: httpx.Client, job_id: str, states: set[str] | None = None, timeout: float = 30
) -> dict[str, Any]:
    wanted = states or TERMINAL

    def reached() -> dict[str, Any] | None:
        job = client.get(f"/jobs/{job_id}").json()
        return job if job["state"] in wanted else None

    return wait_for(reached, timeout, 0.1, f"job {job_id} in {sorted(wanted)}")


def events(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/jobs/{job_id}/events")
    assert response.status_code == 200, response.text
    return list(response.json()["events"])
