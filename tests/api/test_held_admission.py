"""Issue 21, item 3: admission counts held jobs. A dispatched queue keeps its backlog `held` in
the ledger, not in the broker: its depth against the watermark, each tenant's share of it and
each tenant's quota count those jobs too, so the queue sheds instead of growing without bound.
And MEDIC_TENANT_LIMITS: one tenant's own caps on waiting jobs, timeout and attempts."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import KeyFactory
from worker.broker import redis_keys
from worker.broker.redis_client import get_redis
from worker.control import snapshot
from worker.control.backpressure import apply_backpressure
from worker.ledger import db
from worker.ledger.models import jobs
from worker.testing.processes import Processes

HIGH = 20
WINDOW = 4  # jobs of the dispatched queue published at once: the rest wait held


def _states(queue: str, tenant: str | None = None) -> dict[str, int]:
    where = [jobs.c.queue == queue] + ([jobs.c.tenant == tenant] if tenant else [])
    with db.connect() as conn:
        rows = conn.execute(sa.select(jobs.c.state, sa.func.count()).where(*where).group_by(jobs.c.state)).all()
    return {state: int(n) for state, n in rows}


def _client(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _job(queue: str, **fields: object) -> dict[str, object]:
    return {"type": "examples.echo", "args": {"message": "x"}, "queue": queue, **fields}


def _dispatched_env(queue: str, share: float) -> dict[str, str]:
    return {
        "MEDIC_DISPATCH_QUEUES": queue,
        "MEDIC_DISPATCH_WINDOW": str(WINDOW),
        "MEDIC_QUEUE_WATERMARKS": json.dumps({queue: [HIGH, HIGH // 2]}),
        "MEDIC_TENANT_QUEUE_SHARE": str(share),
    }


def test_a_dispatched_queue_whose_held_backlog_passes_the_watermark_sheds(
    procs: Processes, make_key: KeyFactory
) -> None:
    """Seen failing without held jobs in the gate's depth (admit.lua): the broker held only the
    window's 4 messages, so the 21st job and every one after it was accepted (202)."""
    queue = f"gate-held-{uuid.uuid4().hex[:6]}"  # nobody consumes it: it only fills
    _, url = procs.api("api-held-gate", **_dispatched_env(queue, 1.0))
    _, key = make_key()
    with _client(url, key) as client:
        for _ in range(HIGH):
            assert client.post("/jobs", json=_job(queue)).status_code == 202
        assert _states(queue) == {"queued": WINDOW, "held": HIGH - WINDOW}, "the backlog waits held"
        refused = client.post("/jobs", json=_job(queue))
        assert refused.status_code == 429, refused.text
        body = refused.json()
        assert body["error"] == "queue_full" and body["depth"] == HIGH, body
        assert _states(queue) == {"queued": WINDOW, "held": HIGH - WINDOW}, "nothing written"
        report = {q["queue"]: q for q in client.get("/queues").json()["queues"]}
        assert report[queue]["depth"] == HIGH, "GET /queues counts the held jobs"
        assert snapshot.take(dt.datetime.now(dt.UTC), {})["queues"][queue]["depth"] == HIGH, (
            "so does the health snapshot"
        )

        # the loop's count is the ledger's: a held counter lost (or drifted) is set right again
        get_redis().delete(redis_keys.held_count(queue))
        assert client.post("/jobs", json=_job(queue)).status_code == 202, "without the count the gate is blind"
        apply_backpressure(dt.datetime.now(dt.UTC))
        assert int(get_redis().get(redis_keys.held_count(queue)) or 0) == HIGH + 1 - WINDOW
        assert client.post("/jobs", json=_job(queue)).status_code == 429


def test_the_share_refuses_the_tenant_flooding_a_dispatched_queue_first(procs: Processes, make_key: KeyFactory) -> None:
    """Seen failing with the quota counting only `queued` jobs: a second API process, counting
    from the ledger, saw 4 of tenant A's jobs (the window; the rest held) and accepted A's 11th."""
    queue = f"quota-held-{uuid.uuid4().hex[:6]}"
    _, url = procs.api("api-held-share", **_dispatched_env(queue, 0.5))  # a tenant's share: 10
    # a second process: its count of a tenant's jobs comes from the ledger, not from what it admitted
    _, url_2 = procs.api("api-held-share-2", **_dispatched_env(queue, 0.5))
    tenant_a, key_a = make_key()
    _, key_b = make_key()
    with _client(url, key_a) as a, _client(url_2, key_a) as a_2, _client(url_2, key_b) as b:
        statuses = [a.post("/jobs", json=_job(queue)).status_code for _ in range(HIGH)]
        assert statuses == [202] * 10 + [429] * 10, statuses
        assert _states(queue, tenant_a) == {"queued": WINDOW, "held": 10 - WINDOW}, "the flood waits held"
        refused = a_2.post("/jobs", json=_job(queue))
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"] == "tenant_quota" and refused.json()["share"] == 10, refused.text
        assert b.post("/jobs", json=_job(queue)).status_code == 202, "another tenant is still accepted"


def test_a_tenants_own_queued_cap_refuses_it_and_not_the_others(procs: Processes, make_key: KeyFactory) -> None:
    """Seen failing without MEDIC_TENANT_LIMITS in the quota check: the capped tenant's 4th job
    was accepted (the global quota is 100,000)."""
    queue = f"quota-cap-{uuid.uuid4().hex[:6]}"
    capped, key_capped = make_key()
    _, key_other = make_key()
    limits = {capped: {"queued": 3}}
    _, url = procs.api("api-tenant-cap", MEDIC_TENANT_LIMITS=json.dumps(limits), MEDIC_TENANT_QUEUE_SHARE="1")
    with _client(url, key_capped) as c, _client(url, key_other) as other:
        assert [c.post("/jobs", json=_job(queue)).status_code for _ in range(3)] == [202] * 3
        refused = c.post("/jobs", json=_job(queue))
        assert refused.status_code == 429, refused.text
        body = refused.json()
        assert body["error"] == "tenant_quota" and body["quota"] == 3 and "MEDIC_TENANT_LIMITS" in body["message"]
        assert [other.post("/jobs", json=_job(queue)).status_code for _ in range(4)] == [202] * 4


CAPS = [("timeout", "max_timeout_seconds", 60), ("max_attempts", "max_attempts", 3)]


@pytest.mark.parametrize(("field", "limit", "cap"), CAPS, ids=[c[0] for c in CAPS])
def test_a_tenants_own_timeout_and_attempts_caps(
    procs: Processes, make_key: KeyFactory, field: str, limit: str, cap: int
) -> None:
    """Seen failing without MEDIC_TENANT_LIMITS in _check_asked: the capped tenant's timeout of
    61 s and 4 attempts were accepted (202; the global caps are 3600 s and 10)."""
    queue = f"quota-caps-{uuid.uuid4().hex[:6]}"
    capped, key_capped = make_key()
    _, key_other = make_key()
    _, url = procs.api("api-tenant-caps", MEDIC_TENANT_LIMITS=json.dumps({capped: {limit: cap}}))
    with _client(url, key_capped) as c, _client(url, key_other) as other:
        over = c.post("/jobs", json=_job(queue, **{field: cap + 1}))
        assert over.status_code == 422, over.text
        assert over.json()["error"] == "invalid_args" and "MEDIC_TENANT_LIMITS" in over.json()["message"]
        assert over.json()["limit"] == cap
        assert c.post("/jobs", json=_job(queue, **{field: cap})).status_code == 202
        assert other.post("/jobs", json=_job(queue, **{field: cap + 1})).status_code == 202, "others: global cap"


def test_a_held_job_can_be_cancelled(procs: Processes, make_key: KeyFactory) -> None:
    """Seen failing without `held` in transitions.cancel: 409 "a held job cannot be cancelled"."""
    queue = f"gate-cancel-{uuid.uuid4().hex[:6]}"
    _, url = procs.api("api-held-cancel", **_dispatched_env(queue, 1.0))
    _, key = make_key()
    with _client(url, key) as client:
        ids = [client.post("/jobs", json=_job(queue)).json()["id"] for _ in range(WINDOW + 1)]
        held = client.get(f"/jobs/{ids[-1]}").json()
        assert held["state"] == "held", held
        done = client.post(f"/jobs/{ids[-1]}/cancel")
        assert done.status_code == 200 and done.json()["state"] == "cancelled", done.text
        assert _states(queue) == {"queued": WINDOW, "cancelled": 1}
