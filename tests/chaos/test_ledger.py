"""The ledger (PostgreSQL) restarts or kills our connections: a retry at most, never a lost job."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa

from tests.chaos.conftest import TERMINAL, wait_job
from tests.conftest import KeyFactory, switched_env
from tests.ledger_view import assert_no_overlap, job
from tests.testjobs import executions
from worker.ledger import db
from worker.ledger.migrate import upgrade
from worker.testing.processes import Processes, wait_for
from worker.testing.servers import PrivatePostgres


@pytest.fixture
def private_pg(private_ledger: dict[str, str]) -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    server.start()
    upgrade(server.url)
    with switched_env({"MEDIC_DATABASE_URL": server.url}):
        yield server
    server.destroy()


def test_a_ledger_restart_mid_run_loses_nothing_and_never_500s(
    cprocs: Processes, private_pg: PrivatePostgres, make_key: KeyFactory
) -> None:
    """Given the stack on a private PostgreSQL with jobs running and submissions arriving,
    When PostgreSQL restarts, Then the API answers 202 or 503 (never 500) and every job it
    accepted, before and after, succeeds."""
    env = {"MEDIC_DATABASE_URL": private_pg.url}
    _, url = cprocs.api("chaos-api-pg", **env)
    cprocs.worker("chaos-pg", queues="chaos7", concurrency=2, **env)
    cprocs.control_plane(**env)
    _, key = make_key()
    accepted: list[str] = []
    tags: dict[str, str] = {}
    statuses: list[int] = []
    stop = threading.Event()

    def submit_for_a_while() -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            for _i in range(400):  # bounded: at most 400 requests, about 20 s
                if stop.is_set():
                    return
                tag = uuid.uuid4().hex
                body = {"type": "tests.record", "args": {"tag": tag, "seconds": 0.5}, "queue": "chaos7"}
                response = client.post("/jobs", json=body)
                statuses.append(response.status_code)
                if response.status_code == 202:
                    tags[response.json()["id"]] = tag
                    accepted.append(response.json()["id"])
                else:
                    assert response.headers.get("Retry-After"), response.text
                time.sleep(0.05)

    sender = threading.Thread(target=submit_for_a_while)
    sender.start()
    wait_for(lambda: len(accepted) >= 10, 30, 0.05, "jobs accepted before the restart")
    private_pg.stop()
    wait_for(lambda: 503 in statuses, 30, 0.05, "a 503 while the ledger is down")
    time.sleep(1.0)  # keep the ledger down for a moment while work is in flight
    private_pg.start()
    count_after_restart = len(accepted)
    wait_for(lambda: len(accepted) >= count_after_restart + 10, 30, 0.05, "jobs accepted after the restart")
    stop.set()
    sender.join(timeout=30)

    assert set(statuses) <= {202, 503}, sorted(set(statuses))
    for job_id in accepted:
        done = wait_job(uuid.UUID(job_id), TERMINAL, timeout=120)
        assert done.state == "succeeded", (job_id, done.state, done.error)
        # one recorded execution per claim: none ran without a claim, none was lost by the recorder
        assert len(executions(tags[job_id])) == done.attempts, (job_id, done.attempts, executions(tags[job_id]))
    assert_no_overlap(uuid.UUID(j) for j in accepted)


def test_killed_ledger_connections_cost_nothing(cprocs: Processes, make_key: KeyFactory) -> None:
    """Given the stack serving, When pg_terminate_backend kills every connection to the ledger,
    Then the next API call and the next job succeed."""
    _, url = cprocs.api("chaos-api-term")
    cprocs.worker("chaos-term", queues="chaos8", concurrency=1)
    _, key = make_key()
    headers = {"Authorization": f"Bearer {key}"}
    body = {"type": "tests.record", "args": {"tag": uuid.uuid4().hex}, "queue": "chaos8"}
    first = httpx.post(url + "/jobs", json=body, headers=headers).json()
    wait_job(uuid.UUID(first["id"]), {"succeeded"}, timeout=30)

    with db.connect() as conn:
        killed = conn.execute(
            sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar()
    assert killed and killed >= 2, "the API's and the worker's connections"

    tag = uuid.uuid4().hex
    response = httpx.post(url + "/jobs", json=body | {"args": {"tag": tag}}, headers=headers)
    assert response.status_code == 202, response.text
    assert httpx.get(url + f"/jobs/{response.json()['id']}", headers=headers).status_code == 200
    done = wait_job(uuid.UUID(response.json()["id"]), TERMINAL, timeout=30)
    assert done.state == "succeeded" and done.attempts == 1
    assert len(executions(tag)) == 1
    assert job(uuid.UUID(first["id"])).state == "succeeded"
    assert_no_overlap([uuid.UUID(first["id"]), uuid.UUID(response.json()["id"])])
