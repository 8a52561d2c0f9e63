"""A COMMIT whose answer is lost (tests/pg_proxy.py: the COMMIT reaches PostgreSQL, the connection
dies before its answer comes back) is settled, not answered 503: the caller gets 202 with its job,
the row exists once and its message is in the broker. Real API process, real PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.api.test_group_commit import Posts, _insert_waiting, _jobs_locked
from tests.conftest import KeyFactory
from tests.pg_proxy import CommitDropper
from worker.accept.admission import reserved
from worker.broker import inspect
from worker.ledger import db
from worker.ledger.models import jobs
from worker.testing.processes import Processes, wait_for


@pytest.fixture
def proxy(medic_env: dict[str, str]) -> Iterator[CommitDropper]:
    dropper = CommitDropper(medic_env["MEDIC_DATABASE_URL"])
    yield dropper
    dropper.close()


@pytest.fixture
def api(procs: Processes, proxy: CommitDropper) -> str:
    _, url = procs.api("api-lost-commit", MEDIC_DATABASE_URL=proxy.url, MEDIC_SUBMIT_GROUP_WAIT_MS="20")
    return url


def _job(queue: str, message: str) -> dict[str, Any]:
    return {"type": "examples.echo", "args": {"message": message}, "queue": queue}


def _committed_with(message: str) -> int:
    with db.connect() as conn:
        return int(
            conn.scalar(
                sa.select(sa.func.count()).select_from(jobs).where(jobs.c.args["message"].as_string() == message)
            )
            or 0
        )


def _stored_once_and_sent(response: httpx.Response, queue: str, message: str) -> None:
    """The answer is 202 with the job, whose row exists once and whose message is in the broker."""
    assert response.status_code == 202, f"{response.text}; rows committed: {_committed_with(message)}"
    body = response.json()
    with db.connect() as conn:
        rows = conn.execute(sa.select(jobs.c.delivery_id).where(jobs.c.id == uuid.UUID(body["id"]))).all()
    assert len(rows) == 1, rows
    sent = inspect.delivery_ids([queue], 10_000)
    assert sent is not None and str(rows[0].delivery_id) in sent, "the job's message is not in the broker"


def test_a_group_whose_commit_answer_is_lost_answers_202_and_publishes(
    api: str, proxy: CommitDropper, make_key: KeyFactory
) -> None:
    # Bug caught: a lost COMMIT answer for a group of two tenants' jobs answered 503 ("nothing
    # written") to both although the rows were committed (published_at set, no message: a client
    # that retries makes a duplicate).
    queue = f"gate-lc{uuid.uuid4().hex[:6]}"
    marker = f"lost-{uuid.uuid4().hex}"
    posts = [Posts(api, make_key()[1]) for _ in range(2)]  # two tenants: two actors, one transaction
    with _jobs_locked():
        posts[0].send(_job(queue, "first"))  # alone: one autocommit statement, no COMMIT message
        wait_for(_insert_waiting, 20, 0.02, "the committer blocked on the lock")
        posts[0].send(_job(queue, marker))
        posts[1].send(_job(queue, marker + "-b"))
        wait_for(lambda: reserved(queue) == 3, 20, 0.02, "two requests waiting in one group")
        proxy.arm(marker)
    answers = [r for p in posts for r in p.join()][1:]  # the first of tenant 0, then the two of the group
    assert proxy.dropped.is_set(), "the proxy never saw the group's COMMIT"
    assert len(answers) == 2
    for response, message in zip(answers, (marker, marker + "-b"), strict=True):
        _stored_once_and_sent(response, queue, message)


def test_a_keyed_submit_whose_commit_answer_is_lost_answers_202_and_publishes(
    api: str, proxy: CommitDropper, make_key: KeyFactory
) -> None:
    # Bug caught: the same for a job with an idempotency key (its own transaction, not a group's).
    queue = f"gate-lc{uuid.uuid4().hex[:6]}"
    marker = f"lost-{uuid.uuid4().hex}"
    _, key = make_key()
    proxy.arm(marker)
    response = httpx.post(
        api + "/jobs",
        json=_job(queue, marker),
        headers={"Authorization": f"Bearer {key}", "Idempotency-Key": marker},
        timeout=60,
    )
    assert proxy.dropped.is_set(), "the proxy never saw the COMMIT"
    _stored_once_and_sent(response, queue, marker)
