"""Issue 18, item 9: noisy neighbours. One tenant may take only its share of a queue
(`MEDIC_TENANT_QUEUE_SHARE` of the high watermark), so while it is refused the queue still has
room for every other tenant; and a submission may ask for a timeout and attempts only up to the
settings' caps."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import KeyFactory
from worker.ledger import db
from worker.ledger.models import jobs
from worker.settings import get_settings
from worker.testing.processes import Processes

HIGH = 20
SHARE = 0.5  # a tenant's cap: 10 of the queue's 20


def _queued(queue: str, tenant: str | None = None) -> int:
    where = [jobs.c.queue == queue] + ([jobs.c.tenant == tenant] if tenant else [])
    with db.connect() as conn:
        return int(conn.scalar(sa.select(sa.func.count()).select_from(jobs).where(*where)) or 0)


def _client(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _job(queue: str, **fields: object) -> dict[str, object]:
    return {"type": "examples.echo", "args": {"message": "x"}, "queue": queue, **fields}


def test_a_tenant_flooding_a_queue_stops_at_its_share_and_others_are_still_accepted(
    procs: Processes, make_key: KeyFactory
) -> None:
    """Seen failing without the share: tenant A took all 20 places and B got 429 queue_full."""
    queue = f"quota-share-{uuid.uuid4().hex[:6]}"  # nobody consumes it: it only fills
    env = {"MEDIC_QUEUE_WATERMARKS": json.dumps({queue: [HIGH, HIGH // 2]}), "MEDIC_TENANT_QUEUE_SHARE": str(SHARE)}
    _, url = procs.api("api-share", **env)
    tenant_a, key_a = make_key()
    tenant_b, key_b = make_key()
    with _client(url, key_a) as a, _client(url, key_b) as b:
        statuses = [a.post("/jobs", json=_job(queue)).status_code for _ in range(HIGH)]
        assert statuses == [202] * 10 + [429] * 10, statuses
        refused = a.post("/jobs", json=_job(queue))
        assert refused.status_code == 429 and refused.headers["Retry-After"]
        body = refused.json()
        assert body["error"] == "tenant_quota" and body["queue"] == queue and body["share"] == 10, body
        assert "MEDIC_TENANT_QUEUE_SHARE" in body["message"]
        assert _queued(queue, tenant_a) == 10

        assert b.post("/jobs", json=_job(queue)).status_code == 202, "the queue is under its watermark"
        over = b.post("/jobs/batch", json={"jobs": [_job(queue) for _ in range(10)]})
        assert over.status_code == 429 and over.json()["error"] == "tenant_quota", "a batch counts whole"
        assert b.post("/jobs/batch", json={"jobs": [_job(queue) for _ in range(9)]}).status_code == 202
        assert _queued(queue, tenant_b) == 10 and _queued(queue) == HIGH

        other_queue = f"{queue}-other"
        assert a.post("/jobs", json=_job(other_queue)).status_code == 202, "the share is per queue"


CAPS = [
    ("timeout", "max_job_timeout_seconds", "MEDIC_MAX_JOB_TIMEOUT_SECONDS"),
    ("max_attempts", "max_job_attempts", "MEDIC_MAX_JOB_ATTEMPTS"),
]


@pytest.mark.parametrize(("field", "setting", "env"), CAPS, ids=[c[0] for c in CAPS])
def test_a_submission_may_ask_only_up_to_the_caps(client: httpx.Client, field: str, setting: str, env: str) -> None:
    """Seen failing without the caps: a timeout of 3601 s and 11 attempts were accepted (202)."""
    queue = "nobody-consumes-this"
    cap = getattr(get_settings(), setting)
    over = client.post("/jobs", json=_job(queue, **{field: cap + 1}))
    assert over.status_code == 422, over.text
    assert over.json()["error"] == "invalid_args" and env in over.json()["message"], over.text
    batch = client.post("/jobs/batch", json={"jobs": [_job(queue), _job(queue, **{field: cap + 1})]})
    assert batch.status_code == 422
    assert client.get("/jobs").json()["jobs"] == [], "nothing written"
    at_cap = client.post("/jobs", json=_job(queue, **{field: cap}))
    assert at_cap.status_code == 202 and at_cap.json()[field if field != "timeout" else "timeout_s"] == cap
