"""Queues are declared (job types, MEDIC_QUEUES); internal names are never a job's queue; a key
may be limited to some queues; GET /queues is for admins; a revoked key stops working in time."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from tests.conftest import KeyFactory
from worker.accept import enqueue
from worker.errors import UnknownQueueError
from worker.ledger import apikeys, db
from worker.settings import get_settings
from worker.testing.processes import Processes, wait_for

ECHO = {"type": "examples.echo", "args": {"message": "q"}}
# in tests/conftest.py medic_env: MEDIC_QUEUES names it, and prefixes such as `gate-*`
DECLARED = "declared-extra"

REFUSED = [
    ("undeclared", "undeclared-queue"),
    ("control queue", "medic.control"),
    ("medic prefix", "medic.anything"),
    ("kombu binding key", "_kombu.binding.default"),
    ("kombu unacked hash", "unacked"),
    ("priority sub-queue", "default\x06\x163"),
    ("medic key prefix", "medic:admission:default"),
]


def _count(c: httpx.Client) -> int:
    response = c.get("/jobs", params={"limit": 100})
    assert response.status_code == 200, response.text
    return len(response.json()["jobs"])


def _key_client(stack: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=stack, headers={"Authorization": f"Bearer {key}"}, timeout=15)


@pytest.mark.parametrize("queue", [r[1] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_an_undeclared_or_internal_queue_is_422_and_nothing_is_written(client: httpx.Client, queue: str) -> None:
    before = _count(client)
    response = client.post("/jobs", json={**ECHO, "queue": queue})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "unknown_queue"
    batch = client.post("/jobs/batch", json={"jobs": [ECHO, {**ECHO, "queue": queue}]})
    assert batch.status_code == 422, batch.text
    assert _count(client) == before


def test_library_enqueue_refuses_the_control_queue(medic_env: dict[str, str]) -> None:
    tenant = f"lib-{uuid.uuid4().hex[:6]}"
    with pytest.raises(UnknownQueueError):
        enqueue("examples.echo", {"message": "x"}, tenant=tenant, queue="medic.control")


def test_declared_queues_are_accepted(client: httpx.Client) -> None:
    for queue in (DECLARED, f"gate-{uuid.uuid4().hex[:4]}", None):
        body = {**ECHO, "queue": queue} if queue else ECHO
        response = client.post("/jobs", json=body)
        assert response.status_code == 202, response.text
        assert response.json()["queue"] == (queue or get_settings().default_queue)


def test_a_queue_limited_key_submits_only_to_its_queues(stack: str, medic_env: dict[str, str]) -> None:
    tenant = f"lim-{uuid.uuid4().hex[:6]}"
    with db.begin() as conn:
        key = apikeys.create_key(conn, tenant, apikeys.parse_scopes("submit,read"), queues=frozenset({DECLARED}))
    with _key_client(stack, key) as c:
        for body in ({**ECHO, "queue": "default"}, ECHO):  # explicit, and the job type's default queue
            refused = c.post("/jobs", json=body)
            assert refused.status_code == 403, refused.text
            assert refused.json()["error"] == "forbidden"
        assert c.post("/jobs/batch", json={"jobs": [{**ECHO, "queue": DECLARED}, ECHO]}).status_code == 403
        assert _count(c) == 0
        accepted = c.post("/jobs", json={**ECHO, "queue": DECLARED})
        assert accepted.status_code == 202, accepted.text
        assert _count(c) == 1


def test_get_queues_needs_the_admin_scope(stack: str, make_key: KeyFactory) -> None:
    _, reader = make_key("submit,read")
    _, admin = make_key("read,admin")
    with _key_client(stack, reader) as c:
        response = c.get("/queues")
        assert response.status_code == 403, response.text
        assert response.json()["error"] == "forbidden"
    with _key_client(stack, admin) as c:
        assert c.get("/queues").status_code == 200


def test_a_revoked_key_is_refused_within_the_cache_time(procs: Processes, make_key: KeyFactory) -> None:
    """Given an API process that has checked (and cached) a key, When the key is revoked,
    Then the API refuses it within MEDIC_API_KEY_CACHE_SECONDS (1 s in the fast profile)."""
    _, url = procs.api("revoke-api")
    _, key = make_key("read")
    with _key_client(url, key) as c:
        assert c.get("/jobs").status_code == 200
        assert c.get("/jobs").status_code == 200  # served from the cache now
        with db.begin() as conn:
            key_id = apikeys.lookup(conn, key).id  # type: ignore[union-attr]
            assert apikeys.revoke_key(conn, key_id)
        revoked_at = time.monotonic()
        wait_for(lambda: c.get("/jobs").status_code == 401, 10, 0.05, "revoked key refused")
        took = time.monotonic() - revoked_at
    assert took <= get_settings().api_key_cache_seconds + 0.5, took
