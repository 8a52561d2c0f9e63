"""The control loops as plain functions, with the clock passed in: no waiting for leases."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa

from tests import ledger_view
from tests.control.fabricate import empty_ledger, queued_job, running_job
from worker.broker import inspect, presence, redis_keys
from worker.broker.redis_client import get_redis
from worker.clock import seconds, utcnow
from worker.control.loop import loop_stats, run_loop
from worker.control.prune import prune
from worker.control.reconcile import reconcile_broker
from worker.control.recover import recover_stuck
from worker.control.timeouts import enforce_timeouts
from worker.ledger import control_state, db, queries, transitions
from worker.ledger.models import control_state as control_state_table
from worker.ledger.records import Job
from worker.ledger.states import JobState
from worker.settings import get_settings

pytestmark = pytest.mark.usefixtures("private_ledger")


@pytest.fixture(autouse=True)
def _empty_ledger() -> None:
    empty_ledger()


def _queued(queue: str | None = None, **row: Any) -> Job:
    return queued_job("loops", queue, **row)


def _running(worker: str = "ghost@nowhere", pid: int = 4242, **row: Any) -> Job:
    return running_job("loops", worker, pid, **row)


def test_recover_requeues_a_job_whose_lease_expired_and_worker_is_gone() -> None:
    job = _running(max_attempts=3)
    assert recover_stuck(utcnow()) == {"requeued": 0, "dead": 0, "stopped": 0, "lease_late": 0}, "lease still valid"
    later = utcnow() + seconds(60)
    assert recover_stuck(later) == {"requeued": 1, "dead": 0, "stopped": 0, "lease_late": 0}
    after = ledger_view.job(job.id)
    assert after.state == JobState.QUEUED and after.delivery_id != job.delivery_id
    assert ledger_view.reasons(job.id)[-1] == "worker_lost"
    assert inspect.depth(after.queue) == 1, "the new delivery was published"
    again = recover_stuck(later)
    assert again == {"requeued": 0, "dead": 0, "stopped": 0, "lease_late": 0}, "acting twice is impossible"


def test_recover_waits_the_lease_margin_after_the_lease_expired() -> None:
    # Bug caught: recovery taking a job as soon as its lease expires, while the worker's fence
    # (which stops the job at the lease it can prove) may need a moment to act, or the hosts'
    # clocks differ by a little.
    job = _running(max_attempts=3)
    expired = job.lease_expires_at
    assert expired is not None
    margin = seconds(get_settings().lease_margin_seconds)
    assert recover_stuck(expired + margin / 2)["requeued"] == 0, "inside the margin"
    assert recover_stuck(expired + margin + seconds(0.01))["requeued"] == 1, "past it"


def test_recover_revokes_the_old_delivery_before_the_retry_is_published(monkeypatch: pytest.MonkeyPatch) -> None:
    # Bug caught: publish-then-revoke, the window in which a stale process and the retry both run.
    job = _running(max_attempts=3)
    seen: list[tuple[list[Any], int]] = []

    def revoke(ids: list[Any]) -> None:
        seen.append((list(ids), inspect.depth(job.queue)))

    monkeypatch.setattr("worker.control.recover.revoke_deliveries", revoke)
    assert recover_stuck(utcnow() + seconds(60))["requeued"] == 1
    assert seen == [([job.delivery_id], 0)], "revoked while no retry was in the queue yet"
    assert inspect.depth(job.queue) == 1, "then the retry was published"


def test_recover_leaves_a_job_whose_worker_is_still_present() -> None:
    job = _running(worker="alive@here", pid=77)
    presence.announce("alive@here", 77, incarnation="test", held=[job.delivery_id], ttl_s=30)
    assert recover_stuck(utcnow() + seconds(60)) == {"requeued": 0, "dead": 0, "stopped": 0, "lease_late": 1}
    assert ledger_view.job(job.id).state == JobState.RUNNING


def test_recover_declares_dead_when_attempts_are_used_up() -> None:
    job = _running(max_attempts=1)
    assert recover_stuck(utcnow() + seconds(60))["dead"] == 1
    assert ledger_view.job(job.id).state == JobState.DEAD


def test_enforce_timeouts_moves_overdue_jobs_through_timed_out() -> None:
    job = _running(timeout_s=2.0, max_attempts=2)
    assert enforce_timeouts(utcnow()) == {"requeued": 0, "dead": 0, "stopped": 0}
    assert enforce_timeouts(utcnow() + seconds(60)) == {"requeued": 1, "dead": 0, "stopped": 0}
    after = ledger_view.job(job.id)
    assert after.state == JobState.QUEUED and after.attempts == 1
    with db.connect() as conn:
        states = [(e.from_state, e.to_state) for e in queries.get_events(conn, job.id)][-2:]
    assert states == [("running", "timed_out"), ("timed_out", "queued")]


def test_reconcile_publishes_what_the_broker_refused() -> None:
    job = _queued()
    with db.begin() as conn:
        transitions.mark_unpublished(conn, [(job.id, job.delivery_id)])
    assert reconcile_broker(utcnow())["unpublished"] == 1
    after = ledger_view.job(job.id)
    assert after.published_at is not None and after.delivery_id != job.delivery_id
    assert inspect.depth(job.queue) == 1


def test_a_first_start_is_not_taken_for_a_broker_restart() -> None:
    job = _queued()
    with db.begin() as conn:
        conn.execute(sa.delete(control_state_table))
    assert reconcile_broker(utcnow() + seconds(1))["after_restart"] == 0
    assert ledger_view.job(job.id).delivery_id == job.delivery_id
    assert control_state.get(control_state.BROKER_RUN_ID) == inspect.run_id()


def test_reconcile_resends_everything_after_a_broker_restart() -> None:
    made = [_queued(queue="restart-q") for _ in range(5)]
    control_state.put(control_state.BROKER_RUN_ID, "a-run-id-from-before-the-restart", now=utcnow())
    counts = reconcile_broker(utcnow() + seconds(1), limit=2)  # in batches of 2
    assert counts["after_restart"] == 2
    while reconcile_broker(utcnow() + seconds(1), limit=2)["after_restart"]:
        pass
    assert all(ledger_view.job(j.id).delivery_id != j.delivery_id for j in made)
    assert control_state.get(control_state.BROKER_RUN_ID) == inspect.run_id()
    assert control_state.get(control_state.REPUBLISH_BEFORE) is None
    assert reconcile_broker(utcnow() + seconds(1))["after_restart"] == 0


def test_reconcile_resends_only_messages_the_broker_lost() -> None:
    from worker.broker.publish import publish

    kept = _queued(queue="lost-q")
    publish([kept])  # its message is in the queue
    lost = _queued(queue="lost-q")  # never sent: its message is nowhere
    much_later = utcnow() + seconds(get_settings().lost_after_seconds + 60)
    assert reconcile_broker(much_later)["lost"] == 1
    assert ledger_view.job(kept.id).delivery_id == kept.delivery_id
    assert ledger_view.job(lost.id).delivery_id != lost.delivery_id
    assert ledger_view.reasons(lost.id)[-1] == "message_lost"


def test_a_job_whose_message_keeps_vanishing_ends_dead_not_queued_for_ever() -> None:
    """E.g. no worker has its job type registered: Celery drops the message every time."""
    job = _queued(queue="void-q")
    later = utcnow()
    for _ in range(get_settings().max_redeliveries):
        later += seconds(get_settings().lost_after_seconds + 60)
        assert reconcile_broker(later)["lost"] == 1
        broker_keys = redis_keys.queue_lists("void-q")
        get_redis().delete(*broker_keys)  # the message vanishes again
    later += seconds(get_settings().lost_after_seconds + 60)
    assert reconcile_broker(later)["lost"] == 0
    dead = ledger_view.job(job.id)
    assert dead.state == JobState.DEAD
    assert dead.error["type"] == "Undeliverable"
    assert ledger_view.reasons(job.id).count("message_lost") == get_settings().max_redeliveries
    assert ledger_view.reasons(job.id)[-1] == "undeliverable"


def test_prune_deletes_old_finished_jobs_and_their_events_only() -> None:
    old_done = _running()
    with db.begin() as conn:
        transitions.succeed(conn, old_done.id, old_done.delivery_id, 1, actor="t", now=utcnow())
    still_running = _running()
    retention = seconds(get_settings().retention_days * 86400)
    assert prune(utcnow() + retention - dt.timedelta(hours=1))["deleted"] == 0
    assert prune(utcnow() + retention + dt.timedelta(hours=1))["deleted"] == 1
    with db.connect() as conn:
        assert queries.get_job(conn, old_done.id) is None
        assert queries.get_events(conn, old_done.id) == []
        assert queries.get_job(conn, still_running.id) is not None


def test_a_loop_run_is_skipped_while_another_holds_its_lock() -> None:
    calls: list[dt.datetime] = []

    def fn(now: dt.datetime) -> dict[str, int]:
        calls.append(now)
        return {"done": 1}

    get_redis().set(redis_keys.control_lock("busy"), "someone-else", px=5000)
    assert run_loop("busy", fn, lock_ttl_s=5) == {"skipped": "another run holds the lock"}
    assert calls == []
    record = run_loop("free", fn, lock_ttl_s=5)
    assert record["done"] == 1
    assert loop_stats("free")["runs"] == 1
    assert loop_stats("free")["total:done"] == 1
