"""A workflow whose COMMIT answer is lost (tests/pg_proxy.py) is settled, not answered 503: the
caller gets 202 with its workflow, written once, and its roots' messages are in the broker."""

from __future__ import annotations

import uuid

import httpx
import sqlalchemy as sa

from tests.api.test_lost_commit import api, proxy  # noqa: F401 - the fixtures
from tests.conftest import KeyFactory
from tests.pg_proxy import CommitDropper
from worker.broker import inspect
from worker.ledger import db
from worker.ledger.models import jobs, workflows


def test_a_workflow_whose_commit_answer_is_lost_answers_202_written_once_and_published(
    api: str,  # noqa: F811
    proxy: CommitDropper,  # noqa: F811
    make_key: KeyFactory,
) -> None:
    queue = f"gate-lc{uuid.uuid4().hex[:6]}"
    marker = f"lost-{uuid.uuid4().hex}"
    body = {
        "steps": [
            {"name": "a", "type": "examples.echo", "args": {"message": marker}, "queue": queue},
            {"name": "b", "type": "examples.echo", "args": {"message": "b"}, "queue": queue, "after": ["a"]},
        ]
    }
    tenant, key = make_key()
    proxy.arm(marker)
    response = httpx.post(api + "/workflows", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert proxy.dropped.is_set(), "the proxy never saw the COMMIT"
    assert response.status_code == 202, response.text
    workflow_id = uuid.UUID(response.json()["id"])
    with db.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).where(workflows.c.tenant == tenant)) == 1
        rows = conn.execute(sa.select(jobs.c.step, jobs.c.delivery_id).where(jobs.c.workflow_id == workflow_id)).all()
    assert sorted(r.step for r in rows) == ["a", "b"]
    sent = inspect.delivery_ids([queue], 10_000)
    root = next(r for r in rows if r.step == "a")
    assert sent is not None and str(root.delivery_id) in sent, "the root's message is not in the broker"
