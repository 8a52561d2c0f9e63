"""/schedules over HTTP against the real API: validation (422, nothing written), tenant isolation,
scopes, PATCH / DELETE / trigger, audit, and the fired jobs in GET /jobs. No control plane runs
here: nothing fires but what a test triggers."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest

from tests.conftest import KeyFactory

ECHO = {"type": "examples.echo", "args": {"message": "tick"}}


def create(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/schedules", json={"name": "s", **ECHO, "every_seconds": 60, **body})
    assert response.status_code == 201, response.text
    return dict(response.json())


def names(client: httpx.Client) -> list[str]:
    response = client.get("/schedules")
    assert response.status_code == 200, response.text
    return [s["name"] for s in response.json()["schedules"]]


def when(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def test_a_schedule_is_created_and_listed_with_its_next_fires(client: httpx.Client) -> None:
    before = dt.datetime.now(dt.UTC)
    made = create(client, name="nightly", every_seconds=None, cron="30 2 * * *", timezone="Europe/Berlin")
    assert made["origin"] == "api" and made["overlap"] == "skip" and made["fired"] == 0
    first, second, third = (when(t) for t in made["next_fires"])
    assert before < first < second < third and (second - first) == dt.timedelta(days=1)
    assert first.astimezone(dt.timezone(dt.timedelta(0))).minute == 30
    assert client.get(f"/schedules/{made['id']}").json()["name"] == "nightly"
    assert names(client) == ["nightly"]


@pytest.mark.parametrize(
    "body",
    [
        {"every_seconds": 60, "cron": "* * * * *"},  # both
        {"every_seconds": None},  # neither
        {"every_seconds": None, "cron": "61 * * * *"},
        {"every_seconds": None, "cron": "every day"},
        {"every_seconds": None, "cron": "* * * * *", "timezone": "Mars/Olympus"},
        {"type": "no.such.job"},
        {"args": {"nope": 1}},
        {"every_seconds": 0.1},
        {"overlap": "sometimes"},
        {"catch_up_seconds": -1},
        {"queue": "undeclared-queue"},
    ],
)
def test_a_bad_schedule_is_422_and_writes_nothing(client: httpx.Client, body: dict[str, Any]) -> None:
    response = client.post("/schedules", json={"name": "bad", **ECHO, "every_seconds": 60, **body})
    assert response.status_code == 422, response.text
    assert names(client) == []


def test_a_name_is_unique_in_a_tenant(client: httpx.Client) -> None:
    create(client, name="once")
    response = client.post("/schedules", json={"name": "once", **ECHO, "every_seconds": 5})
    assert response.status_code == 409 and response.json()["error"] == "schedule_conflict"


def test_another_tenant_sees_none_of_it(client: httpx.Client, stack: str, make_key: KeyFactory) -> None:
    made = create(client, name="mine")
    _, other_key = make_key()
    with httpx.Client(base_url=stack, headers={"Authorization": f"Bearer {other_key}"}, timeout=15) as other:
        assert other.get("/schedules").json()["schedules"] == []
        sid = made["id"]
        assert other.get(f"/schedules/{sid}").status_code == 404
        assert other.get(f"/schedules/{sid}/events").status_code == 404
        assert other.patch(f"/schedules/{sid}", json={"paused": True}).status_code == 404
        assert other.post(f"/schedules/{sid}/trigger").status_code == 404
        assert other.delete(f"/schedules/{sid}").status_code == 404
        assert other.get("/jobs", params={"schedule_id": sid}).json()["jobs"] == []
    after = client.get(f"/schedules/{sid}").json()
    assert not after["paused"] and after["fired"] == 0


def test_a_read_key_reads_and_changes_nothing(client: httpx.Client, stack: str, make_key: KeyFactory) -> None:
    made = create(client, name="ro")
    _, read_key = make_key("read", tenant=client.tenant)  # type: ignore[attr-defined]
    with httpx.Client(base_url=stack, headers={"Authorization": f"Bearer {read_key}"}, timeout=15) as reader:
        assert reader.get(f"/schedules/{made['id']}").status_code == 200
        assert reader.post("/schedules", json={"name": "x", **ECHO, "every_seconds": 5}).status_code == 403
        assert reader.patch(f"/schedules/{made['id']}", json={"paused": True}).status_code == 403
        assert reader.post(f"/schedules/{made['id']}/trigger").status_code == 403
        assert reader.delete(f"/schedules/{made['id']}").status_code == 403
    assert names(client) == ["ro"]


def test_pause_and_resume_recompute_the_next_fire(client: httpx.Client) -> None:
    made = create(client, every_seconds=3600)
    sid = made["id"]
    paused = client.patch(f"/schedules/{sid}", json={"paused": True}).json()
    assert paused["paused"] and paused["next_fires"] == []
    before = dt.datetime.now(dt.UTC)
    resumed = client.patch(f"/schedules/{sid}", json={"paused": False}).json()
    assert not resumed["paused"] and when(resumed["next_fires"][0]) >= before + dt.timedelta(seconds=3600)
    actions = [e["action"] for e in client.get(f"/schedules/{sid}/events").json()["events"]]
    assert actions == ["resumed", "paused", "created"]


def test_patch_changes_timing_and_args_and_refuses_what_does_not_fit(client: httpx.Client) -> None:
    sid = create(client)["id"]
    to_cron = client.patch(f"/schedules/{sid}", json={"cron": "0 3 * * *", "timezone": "Asia/Tokyo"}).json()
    assert to_cron["cron"] == "0 3 * * *" and to_cron["every_seconds"] is None
    assert when(to_cron["next_fires"][0]).astimezone(dt.timezone(dt.timedelta(hours=9))).hour == 3
    assert client.patch(f"/schedules/{sid}", json={"every_seconds": 5, "cron": "* * * * *"}).status_code == 422
    assert client.patch(f"/schedules/{sid}", json={"args": {"nope": 1}}).status_code == 422
    assert client.patch(f"/schedules/{sid}", json={"timezone": "Nowhere/Else"}).status_code == 422
    assert client.get(f"/schedules/{sid}").json() == to_cron, "a refused PATCH wrote nothing"
    args = client.patch(f"/schedules/{sid}", json={"args": {"message": "new"}}).json()
    assert args["args"] == {"message": "new"} and args["next_fires"] == to_cron["next_fires"]


def test_trigger_fires_a_job_that_shows_its_schedule(client: httpx.Client) -> None:
    sid = create(client, every_seconds=3600)["id"]
    other = create(client, name="other")["id"]
    response = client.post(f"/schedules/{sid}/trigger")
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["schedule_id"] == sid and job["scheduled_for"] is not None
    shown = client.get(f"/jobs/{job['id']}").json()
    assert shown["schedule_id"] == sid and when(shown["scheduled_for"]) == when(job["scheduled_for"])
    assert [j["id"] for j in client.get("/jobs", params={"schedule_id": sid}).json()["jobs"]] == [job["id"]]
    assert client.get("/jobs", params={"schedule_id": other}).json()["jobs"] == []
    after = client.get(f"/schedules/{sid}").json()
    assert after["fired"] == 1 and after["last_job_id"] == job["id"]


def test_delete_removes_the_schedule_and_keeps_its_jobs(client: httpx.Client) -> None:
    sid = create(client)["id"]
    job_id = client.post(f"/schedules/{sid}/trigger").json()["id"]
    assert client.delete(f"/schedules/{sid}").status_code == 204
    assert client.get(f"/schedules/{sid}").status_code == 404
    assert client.delete(f"/schedules/{sid}").status_code == 404
    assert client.get(f"/jobs/{job_id}").json()["schedule_id"] == sid
