"""One tenant cannot stall another's POST /jobs: a job with an idempotency key never joins a group
commit (its insert may wait for another transaction holding the key), two processes' crossed keys
cannot deadlock a group, and a caller's wait for its group is bounded (withdrawn: 503, nothing
written). The waits are printed: the closing note's before/after figures."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from tests.api.test_group_commit import Posts, _insert_waiting, _jobs_locked, _queue
from tests.conftest import KeyFactory
from worker.accept.validate import JobRequest, new_job
from worker.clock import utcnow
from worker.ledger import db, transitions
from worker.ledger.models import jobs
from worker.ledger.records import NewJob
from worker.settings import get_settings
from worker.testing.processes import Processes, wait_for

BOUND_S = 20.0  # generous: before the fix the other tenant waited as long as the key was held


def _row(queue: str, tenant: str, message: str, key: str | None = None) -> NewJob:
    request = JobRequest("examples.echo", {"message": message}, queue, idempotency_key=key)
    return new_job(request, tenant=tenant, s=get_settings(), now=utcnow())


def _lock_waiters() -> int:
    """Backends of this database waiting for a lock (a row, a key, the jobs table)."""
    with db.connect() as conn:
        return int(
            conn.scalar(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
            or 0
        )


@contextlib.contextmanager
def _key_held(row: NewJob) -> Iterator[None]:
    """A transaction that inserted `row` (with its idempotency key) and neither commits nor ends."""
    with db.get_engine().connect() as conn, conn.begin() as tx:
        transitions.create_job_once(conn, row, actor="holder", now=row.created_at)
        yield
        tx.rollback()


@pytest.fixture
def api(procs: Processes) -> str:
    # A lock wait as long as the test's bound: the other tenant's answer must not depend on it.
    _, url = procs.api("api-stalls", MEDIC_DB_LOCK_TIMEOUT_MS="60000", MEDIC_SUBMIT_GROUP_WAIT_MS="20")
    return url


def test_a_key_held_by_one_tenant_does_not_hold_another_tenants_submit(api: str, make_key: KeyFactory) -> None:
    # Bug caught: a keyed job joined the group commit: its insert waited for the transaction
    # holding the key, and every other tenant's POST /jobs of that process waited behind it.
    queue = _queue()
    tenant_a, key_a = make_key()
    _, key_b = make_key()
    key = uuid.uuid4().hex
    a, b = Posts(api, key_a), Posts(api, key_b)
    with _key_held(_row(queue, tenant_a, "held", key)):
        a.send({"type": "examples.echo", "args": {"message": "held"}, "queue": queue}, idempotency_key=key)
        wait_for(lambda: _lock_waiters() == 1, 20, 0.02, "tenant A's submit waiting for its key")
        started = time.monotonic()
        b.send({"type": "examples.echo", "args": {"message": "b"}, "queue": queue})
        answered = _wait_answer(b, BOUND_S)
        waited = time.monotonic() - started
        verdict = "answered" if answered else "NOT answered"
        print(f"\ntenant B's submit while tenant A's key is held: {verdict} in {waited:.3f} s")
    a.join()
    b.join()
    assert answered, f"tenant B's submit was not answered within {BOUND_S} s while A's key was held"
    assert b.responses[0].status_code == 202, b.responses[0].text
    assert a.responses[0].status_code == 202, a.responses[0].text  # A's own submit goes on once the key is free


@pytest.fixture
def crossing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each transaction's first keyed insert waits until another transaction has made its own
    (a barrier of two), so two transactions taking two keys in crossed order cross every time.
    A transaction whose partner is blocked on its key goes on after 2 s (under the lock timeout)."""
    barrier = threading.Barrier(2, timeout=2)
    first_insert: set[int] = set()
    real = transitions.create_job_once

    def paired(conn: sa.Connection, new: NewJob, **kw: Any) -> Any:
        inserted = real(conn, new, **kw)
        tx = id(conn.get_transaction())
        if inserted is not None and tx not in first_insert:
            first_insert.add(tx)
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait()
        return inserted

    monkeypatch.setattr(transitions, "create_job_once", paired)


def test_two_batches_with_crossed_keys_do_not_deadlock(medic_env: dict[str, str], crossing: None) -> None:
    # Bug caught: keyed rows inserted in the caller's order: two batches (POST /jobs/batch,
    # enqueue_many) holding the same two keys in crossed order deadlocked, failing one of them.
    from worker.accept.commit import commit

    queue, tenant = _queue(), f"t-{uuid.uuid4().hex[:8]}"
    k1, k2 = f"k1-{uuid.uuid4().hex}", f"k2-{uuid.uuid4().hex}"
    outcomes: dict[str, Any] = {}

    def batch(name: str, keys: tuple[str, str]) -> None:
        try:
            outcomes[name] = commit([_row(queue, tenant, "same", k) for k in keys], ["t", "t"])
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            outcomes[name] = exc

    threads = [threading.Thread(target=batch, args=a) for a in (("a", (k1, k2)), ("b", (k2, k1)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    failed = {name: repr(o) for name, o in outcomes.items() if isinstance(o, BaseException)}
    print(f"\ncrossed keyed batches: {len(failed)} of 2 failed: {failed}")
    assert len(outcomes) == 2 and not failed


def _wait_answer(posts: Posts, bound_s: float) -> bool:
    deadline = time.monotonic() + bound_s
    while not posts.responses and time.monotonic() < deadline:
        time.sleep(0.005)
    return bool(posts.responses)


def test_crossed_keys_of_two_processes_groups_do_not_deadlock_or_fail_their_plain_callers(
    medic_env: dict[str, str], crossing: None
) -> None:
    # Bug caught: keyed jobs committed in a group: two API processes' groups holding two keys in
    # crossed order deadlocked, and PostgreSQL's deadlock error failed every caller of one group
    # (503), the callers without a key included. Two committers stand for two processes; each
    # transaction's first keyed insert waits for the other's (a barrier), so the crossing happens
    # every time.
    from worker.accept.group_commit import GroupCommitter

    queue, tenant = _queue(), f"t-{uuid.uuid4().hex[:8]}"
    k1, k2 = f"k1-{uuid.uuid4().hex}", f"k2-{uuid.uuid4().hex}"
    x, y = GroupCommitter(0.05, 100, 10), GroupCommitter(0.05, 100, 10)
    outcomes: dict[str, Any] = {}
    threads: list[threading.Thread] = []

    def submit(committer: GroupCommitter, name: str, key: str | None) -> None:
        def run() -> None:
            try:
                outcomes[name] = committer.submit(
                    _row(queue, tenant, "same", key) if key else _row(queue, tenant, name), "t"
                )
            except Exception as exc:  # noqa: BLE001 - the outcome under test
                outcomes[name] = exc

        threads.append(threading.Thread(target=run))
        threads[-1].start()

    def parked() -> int:
        return x._queue.qsize() + y._queue.qsize() + _lock_waiters()

    with _jobs_locked():  # each committer's first row blocks; the others wait in order behind it
        submit(x, "x-first", None)
        submit(y, "y-first", None)
        wait_for(lambda: parked() == 2, 20, 0.01, "both committers blocked")
        order = [
            (x, "x-k1", k1),
            (x, "x-k2", k2),
            (x, "x-plain", None),
            (y, "y-k2", k2),
            (y, "y-k1", k1),
            (y, "y-plain", None),
        ]
        for n, (committer, name, key) in enumerate(order, start=3):
            submit(committer, name, key)
            wait_for(lambda n=n: parked() == n, 20, 0.01, f"{name} waiting")  # type: ignore[misc]
    for thread in threads:
        thread.join(60)
    failed = {name: repr(o) for name, o in outcomes.items() if isinstance(o, BaseException)}
    print(f"\ncrossed keyed groups: {len(failed)} of {len(outcomes)} callers failed: {failed}")
    assert len(outcomes) == 8 and not failed
    with db.connect() as conn:
        per_key = conn.execute(
            sa.select(jobs.c.idempotency_key, sa.func.count())
            .where(jobs.c.queue == queue)
            .group_by(jobs.c.idempotency_key)
        ).all()
    assert sorted((k or "", n) for k, n in per_key) == sorted([("", 4), (k1, 1), (k2, 1)])


def test_a_caller_whose_group_does_not_answer_in_time_is_answered_503_with_nothing_written(
    medic_env: dict[str, str],
) -> None:
    # Bug caught: `done.wait()` without a timeout: a caller waited as long as its group did (for
    # ever behind a hung committer); or a late caller's row written after its 503.
    from worker.accept.group_commit import GroupCommitter
    from worker.errors import CommitUnconfirmedError

    queue, tenant = _queue(), f"t-{uuid.uuid4().hex[:8]}"
    committer = GroupCommitter(0.0, 100, 10, 0.5)
    outcomes: dict[str, Any] = {}
    rows = {name: _row(queue, tenant, name) for name in ("first", "late")}

    def submit(name: str) -> None:
        try:
            outcomes[name] = committer.submit(rows[name], "t")
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            outcomes[name] = exc

    threads = [threading.Thread(target=submit, args=(name,)) for name in rows]
    with _jobs_locked():  # the first row's insert blocks; the late one waits in the queue
        threads[0].start()
        wait_for(_insert_waiting, 20, 0.02, "the committer blocked on the lock")
        threads[1].start()
        threads[1].join(BOUND_S)
        answered_while_held = "late" in outcomes
    threads[0].join(60)
    assert answered_while_held, f"the late caller was not answered within {BOUND_S} s"
    late = outcomes["late"]
    assert isinstance(late, CommitUnconfirmedError) and late.details["outcome"] == "not_written", late
    wait_for(lambda: committer._queue.qsize() == 0, 20, 0.01, "the committer went past the withdrawn row")
    with db.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(jobs).where(jobs.c.id == rows["late"].id)) == 0


def test_a_late_caller_whose_row_the_committer_took_settles_it_itself(
    medic_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Bug caught: a late caller answered 503 "nothing written" for a row its stuck committer may
    # still commit (a retry would duplicate it), or the row written twice once the committer goes on.
    from worker.accept import group_commit
    from worker.accept.commit import Accepted

    stuck, finished, real = threading.Event(), threading.Event(), group_commit.commit

    def held(*args: Any, **kw: Any) -> Any:  # the committer holds its group until released
        stuck.wait(30)
        try:
            return real(*args, **kw)
        finally:
            finished.set()

    monkeypatch.setattr(group_commit, "commit", held)
    queue, tenant = _queue(), f"t-{uuid.uuid4().hex[:8]}"
    committer = group_commit.GroupCommitter(0.0, 100, 10, 0.3)
    row = _row(queue, tenant, "taken")
    try:
        outcome = committer.submit(row, "t")
    finally:
        stuck.set()
    assert isinstance(outcome, Accepted) and outcome.created and outcome.job.id == row.id, outcome
    assert finished.wait(30), "the committer never went on"
    with db.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(jobs).where(jobs.c.id == row.id)) == 1
