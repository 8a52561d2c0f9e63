"""Group commit of POST /jobs in a real API process: concurrent submissions share a transaction,
each caller is answered after its COMMIT, the waiting queue is bounded (503), idempotency keys
work inside a group, and one bad row never fails the others.

To hold a group open, a test takes a SHARE lock on `jobs`: the committer blocks on its INSERT
while later requests wait in its queue (seen as live admission reservations in Redis)."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import KeyFactory
from worker.accept.admission import reserved
from worker.ledger import db
from worker.ledger.models import jobs
from worker.ledger.records import NewJob
from worker.testing.processes import Processes, wait_for


def _job(queue: str, message: str = "x") -> dict[str, Any]:
    return {"type": "examples.echo", "args": {"message": message}, "queue": queue}


def _queue() -> str:
    return f"gate-gc{uuid.uuid4().hex[:6]}"  # declared (gate-*); nobody consumes it


@contextlib.contextmanager
def _jobs_locked() -> Iterator[None]:
    """Inserts into `jobs` wait until the block ends (a SHARE lock conflicts with ROW EXCLUSIVE)."""
    with db.get_engine().connect() as conn, conn.begin():
        conn.execute(sa.text("LOCK TABLE jobs IN SHARE MODE"))
        yield


def _insert_waiting() -> bool:
    """Some backend waits for a lock on the jobs table (the committer's INSERT; its text may be an
    EXECUTE of the prepared insert, so the lock, not the text, tells)."""
    with db.connect() as conn:
        n = conn.scalar(sa.text("SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'jobs'::regclass"))
    return bool(n)


class Posts:
    """Requests sent from threads; their responses collected in order of completion."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.responses: list[httpx.Response] = []
        self.visible_at_answer: list[bool] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def send(self, body: dict[str, Any], idempotency_key: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key

        def post() -> None:
            response = httpx.post(self.url + "/jobs", json=body, headers=headers, timeout=60)
            visible = response.status_code in (200, 202) and _committed(uuid.UUID(response.json()["id"]))
            with self._lock:
                self.responses.append(response)
                self.visible_at_answer.append(visible)

        thread = threading.Thread(target=post)
        thread.start()
        self._threads.append(thread)

    def join(self) -> list[httpx.Response]:
        for thread in self._threads:
            thread.join(timeout=60)
        return self.responses


def _committed(job_id: uuid.UUID) -> bool:
    with db.connect() as conn:
        return conn.scalar(sa.select(sa.func.count()).select_from(jobs).where(jobs.c.id == job_id)) == 1


def _transactions(job_ids: list[str]) -> int:
    """How many transactions wrote these rows (rows of one transaction share its xmin)."""
    with db.connect() as conn:
        return int(
            conn.scalar(
                sa.text("SELECT count(DISTINCT xmin::text) FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))"),
                {"ids": job_ids},
            )
            or 0
        )


@pytest.fixture
def api(procs: Processes) -> str:
    _, url = procs.api("api-group", MEDIC_SUBMIT_GROUP_QUEUE="4", MEDIC_SUBMIT_GROUP_WAIT_MS="20")
    return url


def test_concurrent_submissions_share_transactions_and_each_is_answered_after_its_commit(
    api: str, make_key: KeyFactory
) -> None:
    # Bug caught: one transaction per request (no group commit), or a 202 sent before the COMMIT
    # (the row not yet visible to another connection when the client reads the answer).
    queue = _queue()
    _, key = make_key()
    posts = Posts(api, key)
    with _jobs_locked():
        posts.send(_job(queue, "first"))
        wait_for(_insert_waiting, 20, 0.02, "the committer blocked on the lock")
        for i in range(3):
            posts.send(_job(queue, str(i)))
        wait_for(lambda: reserved(queue) == 4, 20, 0.02, "three requests waiting in the queue")
    responses = posts.join()
    assert [r.status_code for r in responses] == [202] * 4, [r.text for r in responses]
    assert all(posts.visible_at_answer), "a 202 came before its row was committed"
    ids = [r.json()["id"] for r in responses]
    assert _transactions(ids) == 2, "the three that waited together must commit in one transaction"


def test_a_full_waiting_queue_answers_503_overloaded_and_writes_nothing(api: str, make_key: KeyFactory) -> None:
    # Bug caught: an unbounded queue (memory and latency grow without limit under a slow ledger).
    queue = _queue()
    _, key = make_key()
    posts = Posts(api, key)
    with _jobs_locked():
        posts.send(_job(queue, "first"))
        wait_for(_insert_waiting, 20, 0.02, "the committer blocked on the lock")
        for i in range(7):  # the queue holds 4: three are refused at once
            posts.send(_job(queue, str(i)))
        wait_for(lambda: sum(r.status_code == 503 for r in posts.responses) == 3, 20, 0.02, "three refused")
    responses = posts.join()
    refused = [r for r in responses if r.status_code == 503]
    assert all(r.json()["error"] == "overloaded" and r.headers["Retry-After"] == "1" for r in refused)
    assert sorted(r.status_code for r in responses) == [202] * 5 + [503] * 3
    with db.connect() as conn:
        written = conn.scalar(sa.select(sa.func.count()).select_from(jobs).where(jobs.c.queue == queue))
    assert written == 5


def test_idempotency_keys_inside_one_group_create_once_replay_and_conflict_alone(
    api: str, make_key: KeyFactory
) -> None:
    # Bug caught: two requests with one key in one group both create (a duplicate job) or one
    # fails the group; a conflicting key fails the other callers of its group.
    queue = _queue()
    _, key = make_key()
    taken = uuid.uuid4().hex
    with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {key}"}) as client:
        assert client.post("/jobs", json=_job(queue, "a"), headers={"Idempotency-Key": taken}).status_code == 202
    same = uuid.uuid4().hex
    posts = Posts(api, key)
    with _jobs_locked():
        posts.send(_job(queue, "first"))
        wait_for(_insert_waiting, 20, 0.02, "the committer blocked on the lock")
        posts.send(_job(queue, "k"), idempotency_key=same)
        posts.send(_job(queue, "k"), idempotency_key=same)
        posts.send(_job(queue, "other args"), idempotency_key=taken)  # conflicts with job "a"
        posts.send(_job(queue, "plain"))
        wait_for(lambda: reserved(queue) == 5, 20, 0.02, "four requests waiting in one group")
    responses = posts.join()
    by_status = sorted(r.status_code for r in responses)
    assert by_status == [200, 202, 202, 202, 409], [r.text for r in responses]
    keyed = [r for r in responses if r.status_code in (200, 202) and r.json()["args"] == {"message": "k"}]
    assert len(keyed) == 2 and keyed[0].json()["id"] == keyed[1].json()["id"]
    replay = next(r for r in keyed if r.status_code == 200)
    assert replay.headers["Idempotent-Replayed"] == "true"
    with db.connect() as conn:
        rows = conn.scalar(
            sa.select(sa.func.count()).select_from(jobs).where(jobs.c.queue == queue, jobs.c.idempotency_key == same)
        )
    assert rows == 1


def test_a_row_the_ledger_refuses_fails_alone_and_a_group_is_published_in_one_pipeline(
    medic_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Bug caught: one bad row fails every caller of its group; a publish per job instead of one
    # pipeline per group. In-process: a row the validation would refuse is put in directly.
    from worker.accept import commit
    from worker.accept.group_commit import GroupCommitter
    from worker.accept.validate import JobRequest, new_job
    from worker.clock import utcnow
    from worker.settings import get_settings

    sent: list[int] = []
    real_publish = commit.publish
    monkeypatch.setattr(commit, "publish", lambda rows, **kw: sent.append(len(rows)) or real_publish(rows, **kw))
    queue = _queue()
    s = get_settings()

    def row(message: str) -> NewJob:
        built = new_job(JobRequest("examples.echo", {"message": "x"}, queue), tenant="gc", s=s, now=utcnow())
        return dataclasses.replace(built, args={"message": message})

    committer = GroupCommitter(wait_s=0.0, max_rows=100, bound=10)
    outcomes: dict[str, Any] = {}

    def submit_one(message: str) -> None:
        try:
            outcomes[message] = committer.submit(row(message), actor="test")
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            outcomes[message] = exc

    threads = [threading.Thread(target=submit_one, args=("first",))]
    with _jobs_locked():
        threads[0].start()
        wait_for(_insert_waiting, 20, 0.02, "the committer blocked on the lock")
        for message in ("ok-1", "bad\x00", "ok-2"):  # JSONB refuses NUL: a DataError for the group
            threads.append(threading.Thread(target=submit_one, args=(message,)))
            threads[-1].start()
        wait_for(lambda: committer._queue.qsize() == 3, 20, 0.01, "three rows waiting")
    for thread in threads:
        thread.join(timeout=30)
    assert isinstance(outcomes["bad\x00"], sa.exc.DataError), outcomes
    for message in ("first", "ok-1", "ok-2"):
        assert isinstance(outcomes[message], commit.Accepted) and outcomes[message].published, outcomes
        assert _committed(outcomes[message].job.id)
    assert sent == [1, 2], "one pipeline per group: the first alone, then the two good rows of the second"
