"""The ledger's state machine on PostgreSQL and SQLite: transitions, fences, events."""

from __future__ import annotations

import datetime as dt
import threading
import uuid

import pytest
import sqlalchemy as sa

from tests.ledger.conftest import NewJob
from tests.ledger.make import a_new_job
from worker.clock import utcnow
from worker.errors import InvalidTransitionError
from worker.ledger import queries, transitions
from worker.ledger.models import job_events, jobs
from worker.ledger.records import Job
from worker.ledger.states import JobState

LEASE = 10.0
CAP = 300.0


def _claim(engine: sa.Engine, job: Job, delivery: uuid.UUID | None = None) -> Job | None:
    with engine.begin() as conn:
        return transitions.claim(
            conn, job.id, delivery or job.delivery_id, worker="w@test", pid=1, now=utcnow(), lease_s=LEASE
        )


def _events(engine: sa.Engine, job_id: uuid.UUID) -> list[tuple[str | None, str, str]]:
    with engine.connect() as conn:
        return [(e.from_state, e.to_state, e.reason) for e in queries.get_events(conn, job_id)]


def test_created_job_is_queued_with_an_event(engine: sa.Engine, new_job: NewJob) -> None:
    job = new_job()
    assert job.state == JobState.QUEUED
    assert job.attempts == 0
    assert _events(engine, job.id) == [(None, "queued", "enqueued")]


def test_claim_needs_the_current_delivery_and_happens_once(engine: sa.Engine, new_job: NewJob) -> None:
    job = new_job()
    assert _claim(engine, job, uuid.uuid4()) is None, "a stale delivery must not claim"
    claimed = _claim(engine, job)
    assert claimed is not None
    assert claimed.state == JobState.RUNNING
    assert claimed.attempts == 1
    assert claimed.lease_expires_at > claimed.started_at
    assert _claim(engine, job) is None, "a duplicate delivery must not claim"
    assert _events(engine, job.id)[-1] == ("queued", "running", "claimed")


def test_transition_refuses_what_the_state_machine_forbids(engine: sa.Engine, new_job: NewJob) -> None:
    job = new_job()
    with engine.begin() as conn, pytest.raises(InvalidTransitionError):
        transitions.transition(conn, job.id, JobState.QUEUED, JobState.SUCCEEDED, actor="t", reason="r", now=utcnow())


def test_transition_from_the_wrong_state_changes_nothing(engine: sa.Engine, new_job: NewJob) -> None:
    job = new_job()
    with engine.begin() as conn:
        assert transitions.succeed(conn, job.id, job.delivery_id, 1, actor="t", now=utcnow()) is None
    assert _events(engine, job.id) == [(None, "queued", "enqueued")]


def test_failure_with_attempts_left_requeues_with_backoff_and_a_new_delivery(
    engine: sa.Engine, new_job: NewJob
) -> None:
    job = new_job(max_attempts=2, backoff_s=4.0)
    running = _claim(engine, job)
    assert running is not None
    now = utcnow()
    with engine.begin() as conn:
        after = transitions.give_back(
            conn, running, reason="error", actor="t", now=now, max_backoff_s=CAP, error={"type": "E"}
        )
    assert after is not None
    assert after.state == JobState.QUEUED
    assert after.delivery_id != running.delivery_id
    assert after.not_before == now + dt.timedelta(seconds=4.0)
    assert after.error == {"type": "E"}
    # the old delivery cannot claim the requeued job; the new one can
    assert _claim(engine, job) is None
    again = _claim(engine, after)
    assert again is not None and again.attempts == 2
    with engine.begin() as conn:
        final = transitions.give_back(conn, again, reason="error", actor="t", now=utcnow(), max_backoff_s=CAP)
    assert final is not None and final.state == JobState.DEAD
    assert final.finished_at is not None


def test_a_late_report_of_an_old_delivery_changes_nothing(engine: sa.Engine, new_job: NewJob) -> None:
    job = new_job(max_attempts=3)
    first = _claim(engine, job)
    assert first is not None
    with engine.begin() as conn:
        requeued = transitions.give_back(conn, first, reason="worker_lost", actor="t", now=utcnow(), max_backoff_s=CAP)
    assert requeued is not None
    second = _claim(engine, requeued)
    assert second is not None
    with engine.begin() as conn:  # the first delivery reports again, late
        assert transitions.give_back(conn, first, reason="error", actor="t", now=utcnow(), max_backoff_s=CAP) is None
        assert transitions.succeed(conn, job.id, first.delivery_id, "late", actor="t", now=utcnow()) is None
    with engine.connect() as conn:
        current = queries.get_job(conn, job.id)
    assert current is not None and current.state == JobState.RUNNING and current.delivery_id == second.delivery_id


def test_time_out_passes_through_timed_out(engine: sa.Engine, new_job: NewJob) -> None:
    job = new_job(max_attempts=1)
    running = _claim(engine, job)
    assert running is not None
    with engine.begin() as conn:
        after = transitions.time_out(conn, running, actor="t", now=utcnow(), max_backoff_s=CAP, detail="too slow")
    assert after is not None and after.state == JobState.DEAD
    assert _events(engine, job.id)[-2:] == [("running", "timed_out", "timeout"), ("timed_out", "dead", "timeout")]


def test_cancel_is_tenant_scoped_and_only_for_live_jobs(engine: sa.Engine, new_job: NewJob) -> None:
    job = new_job(tenant="a")
    with engine.begin() as conn:
        assert transitions.cancel(conn, job.id, "b", actor="t", now=utcnow()) is None
        done = transitions.cancel(conn, job.id, "a", actor="t", now=utcnow())
    assert done is not None and done[0] == JobState.QUEUED and done[1].state == JobState.CANCELLED
    with engine.begin() as conn:
        assert transitions.cancel(conn, job.id, "a", actor="t", now=utcnow()) is None

    running = _claim(engine, new_job(tenant="a"))
    assert running is not None
    with engine.begin() as conn:
        assert transitions.cancel(conn, running.id, "b", actor="t", now=utcnow()) is None
        done = transitions.cancel(conn, running.id, "a", actor="t", now=utcnow())
    assert done is not None and done[0] == JobState.RUNNING
    assert done[1].state == JobState.RUNNING and done[1].cancel_requested_at is not None
    with engine.begin() as conn:  # the worker's success arrives after the request: not a success
        assert transitions.succeed(conn, running.id, running.delivery_id, 1, actor="t", now=utcnow()) is None


def test_manual_retry_of_a_dead_job_gives_fresh_attempts(engine: sa.Engine, new_job: NewJob) -> None:
    job = new_job(max_attempts=1)
    running = _claim(engine, job)
    assert running is not None
    with engine.begin() as conn:
        transitions.give_back(conn, running, reason="error", actor="t", now=utcnow(), max_backoff_s=CAP)
        assert transitions.retry_dead(conn, job.id, "someone-else", actor="t", now=utcnow()) is None
        again = transitions.retry_dead(conn, job.id, "ledger-tests", actor="t", now=utcnow())
    assert again is not None and again.state == JobState.QUEUED and again.attempts == 0
    assert again.delivery_id != running.delivery_id
    assert _events(engine, job.id)[-1] == ("dead", "queued", "manual_retry")


def test_leases_extend_only_for_the_delivery_held(engine: sa.Engine, new_job: NewJob) -> None:
    job = new_job()
    running = _claim(engine, job)
    assert running is not None
    later = utcnow() + dt.timedelta(seconds=30)
    with engine.begin() as conn:
        assert transitions.extend_leases(conn, {job.id: uuid.uuid4()}, now=later, lease_s=LEASE).extended == set()
        renewal = transitions.extend_leases(conn, {job.id: running.delivery_id}, now=later, lease_s=LEASE)
        assert renewal.extended == {job.id} and renewal.cancel_requested == set()
        row = queries.get_job(conn, job.id)
    assert row is not None and row.lease_expires_at == later + dt.timedelta(seconds=LEASE)


def test_idempotent_create_returns_none_for_a_repeat(engine: sa.Engine, new_job: NewJob) -> None:
    first = new_job(idempotency_key="k1")
    again = a_new_job(first.tenant, idempotency_key="k1")  # a new id and delivery, the same key
    with engine.begin() as conn:
        assert transitions.create_job_once(conn, again, actor="t", now=utcnow()) is None
        found = queries.find_by_idempotency_key(conn, "ledger-tests", "k1")
        count = conn.scalar(sa.select(sa.func.count()).select_from(jobs).where(jobs.c.idempotency_key == "k1"))
    assert found is not None and found.id == first.id
    assert count == 1


def test_keyset_pagination_walks_every_job_once(engine: sa.Engine, new_job: NewJob) -> None:
    tenant = f"page-{uuid.uuid4().hex[:6]}"
    made = {new_job(tenant=tenant).id for _ in range(7)}
    seen: list[uuid.UUID] = []
    before = None
    with engine.connect() as conn:
        while True:
            page = queries.list_jobs(conn, tenant, limit=3, before=before)
            seen += [r.id for r in page]
            if len(page) < 3:
                break
            before = (page[-1].created_at, page[-1].id)
    assert len(seen) == len(set(seen)) == 7
    assert set(seen) == made


def test_events_are_deleted_with_their_job(engine: sa.Engine, new_job: NewJob) -> None:
    job = new_job()
    with engine.begin() as conn:
        conn.execute(sa.delete(jobs).where(jobs.c.id == job.id))
        left = conn.scalar(sa.select(sa.func.count()).select_from(job_events).where(job_events.c.job_id == job.id))
    assert left == 0


def test_concurrent_claims_of_one_delivery_have_one_winner(engine: sa.Engine, new_job: NewJob) -> None:
    """Ten threads race to claim the same delivery: exactly one gets it."""
    job = new_job()
    wins: list[Job] = []
    barrier = threading.Barrier(10)

    def race() -> None:
        barrier.wait()
        row = _claim(engine, job)
        if row is not None:
            wins.append(row)

    threads = [threading.Thread(target=race) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert _events(engine, job.id).count(("queued", "running", "claimed")) == 1


# --- cancel requests and progress (issue 20, parts 3 and 4) -----------------------------------


def test_a_cancel_request_is_one_event_and_the_heartbeat_reads_it(engine: sa.Engine, new_job: NewJob) -> None:
    """A running job's cancel is a request: it stays running with one `cancel_requested` event (a
    second request adds none), and the lease extension reports it to the worker."""
    running = _claim(engine, new_job(tenant="a"))
    assert running is not None
    with engine.begin() as conn:
        first = transitions.cancel(conn, running.id, "a", actor="api:k", now=utcnow())
        again = transitions.cancel(conn, running.id, "a", actor="api:k", now=utcnow())
        renewal = transitions.extend_leases(conn, {running.id: running.delivery_id}, now=utcnow(), lease_s=LEASE)
    assert first is not None and again is not None
    assert again[1].cancel_requested_at == first[1].cancel_requested_at
    assert _events(engine, running.id)[-1] == ("running", "running", "cancel_requested")
    assert [e for e in _events(engine, running.id) if e[2] == "cancel_requested"] == [
        ("running", "running", "cancel_requested")
    ]
    assert renewal.extended == {running.id} and renewal.cancel_requested == {running.id}


@pytest.mark.parametrize("how", ["error", "worker_lost", "timeout", "success"])
def test_a_job_whose_cancel_was_requested_is_never_retried_it_is_stopped(
    engine: sa.Engine, new_job: NewJob, how: str
) -> None:
    """Whoever reports the end of a run after a cancel request (the task body, the lost-child
    report, recover_stuck, the timeout loop), the job ends `cancelled`, reason `stopped`."""
    running = _claim(engine, new_job(tenant="a", max_attempts=5))
    assert running is not None
    with engine.begin() as conn:
        transitions.cancel(conn, running.id, "a", actor="api:k", now=utcnow())
        now = utcnow()
        if how == "success":
            assert transitions.succeed(conn, running.id, running.delivery_id, 7, actor="w", now=now) is None
            after = transitions.stop(conn, running, actor="w", now=now, detail="returned", result=7)
        elif how == "timeout":
            after = transitions.time_out(conn, running, actor="w", now=now, max_backoff_s=CAP, detail="slow")
        else:
            after = transitions.give_back(conn, running, reason=how, actor="w", now=now, max_backoff_s=CAP)
    assert after is not None and after.state == JobState.CANCELLED and after.finished_at is not None
    assert _events(engine, running.id)[-2:] == [
        ("running", "running", "cancel_requested"),
        ("running", "cancelled", "stopped"),
    ]
    if how == "success":
        assert after.result == 7


def test_stop_is_only_for_a_job_whose_cancel_was_requested(engine: sa.Engine, new_job: NewJob) -> None:
    running = _claim(engine, new_job())
    assert running is not None
    with engine.begin() as conn:
        assert transitions.stop(conn, running, actor="w", now=utcnow(), detail="x") is None
        given = transitions.give_back(conn, running, reason="error", actor="w", now=utcnow(), max_backoff_s=CAP)
    assert given is not None and given.state == JobState.QUEUED


def test_progress_is_kept_on_the_row_with_one_event_per_report(engine: sa.Engine, new_job: NewJob) -> None:
    running = _claim(engine, new_job())
    assert running is not None
    report = {"fraction": 0.4, "message": "step 2 of 5"}
    with engine.begin() as conn:
        stale = {running.id: (uuid.uuid4(), report)}  # another delivery's report changes nothing
        assert transitions.report_progress(conn, stale, actor="w", now=utcnow()) == 0
        written = transitions.report_progress(
            conn, {running.id: (running.delivery_id, report)}, actor="w", now=utcnow()
        )
        row = queries.get_job(conn, running.id)
        events = queries.get_events(conn, running.id)
    assert written == 1
    assert row is not None and row.state == JobState.RUNNING
    assert {k: row.progress[k] for k in ("fraction", "message")} == report and "at" in row.progress
    assert [(e.reason, e.detail) for e in events if e.reason == "progress"] == [
        ("progress", '{"fraction":0.4,"message":"step 2 of 5"}')
    ]


def test_bulk_cancel_selection_is_tenant_scoped_and_bounded(engine: sa.Engine, new_job: NewJob) -> None:
    a, b = f"a-{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"
    mine = [new_job(tenant=a, queue="q-bulk") for _ in range(3)]
    new_job(tenant=b, queue="q-bulk")
    new_job(tenant=a, queue="q-other")
    running = _claim(engine, mine[0])
    assert running is not None
    with engine.begin() as conn:
        assert set(queries.cancellable(conn, a, limit=10, queue="q-bulk")) == {j.id for j in mine}
        assert len(queries.cancellable(conn, a, limit=2, queue="q-bulk")) == 2
        assert queries.cancellable(conn, a, limit=10, queue="q-bulk", state="running") == [running.id]
        transitions.cancel(conn, running.id, a, actor="t", now=utcnow())
        assert queries.cancellable(conn, a, limit=10, queue="q-bulk", state="running") == []  # asked already
