"""Presence names a process incarnation and the deliveries it holds: recover_stuck takes an
expired job whose process is present but no longer holds (or never held) that delivery."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import redis

from api.routes.health import _workers
from tests import ledger_view
from tests.control.fabricate import empty_ledger, running_job
from worker.broker import presence, redis_keys
from worker.broker.redis_client import get_redis
from worker.clock import seconds, utcnow
from worker.control.recover import recover_stuck
from worker.ledger.records import Job
from worker.ledger.states import JobState
from worker.settings import get_settings

pytestmark = pytest.mark.usefixtures("private_ledger")


@pytest.fixture(autouse=True)
def _empty_ledger() -> None:
    empty_ledger()
    get_redis().delete(redis_keys.workers_live())


def _running(worker: str, pid: int, **row: Any) -> Job:
    return running_job("presence", worker, pid, **{"max_attempts": 3, **row})


def test_a_present_process_that_does_not_hold_the_delivery_does_not_protect_it() -> None:
    """The claim committed but the process never ran the job (lost reply), or finalize gave up:
    the process beats on, holding other deliveries. Bug caught: presence alone protecting it."""
    job = _running("busy@host", 31)
    other = _running("busy@host", 31)
    presence.announce("busy@host", 31, incarnation="inc-1", held=[other.delivery_id], ttl_s=30)
    counts = recover_stuck(utcnow() + seconds(60))
    assert counts == {"requeued": 1, "dead": 0, "stopped": 0, "lease_late": 1}, "only the held delivery is left alone"
    after = ledger_view.job(job.id)
    assert after.state == JobState.QUEUED and after.delivery_id != job.delivery_id
    assert ledger_view.reasons(job.id)[-1] == "worker_lost"
    assert ledger_view.job(other.id).state == JobState.RUNNING


def test_a_restarted_process_with_the_same_hostname_and_pid_does_not_protect_the_old_job() -> None:
    """A container restarted with the same hostname and pid 1: a new incarnation, holding only
    its own deliveries. Bug caught: (hostname, pid) taken as the identity of a process."""
    old = _running("container@web", 1)
    presence.announce("container@web", 1, incarnation="before-restart", held=[old.delivery_id], ttl_s=30)
    assert recover_stuck(utcnow() + seconds(60))["lease_late"] == 1, "the old incarnation held it"
    presence.announce("container@web", 1, incarnation="after-restart", held=[uuid.uuid4()], ttl_s=30)
    assert recover_stuck(utcnow() + seconds(60)) == {"requeued": 1, "dead": 0, "stopped": 0, "lease_late": 0}
    assert ledger_view.job(old.id).state == JobState.QUEUED


def test_a_present_process_that_holds_the_delivery_keeps_its_job() -> None:
    """The worker may be stalled on the ledger: taking the job would start a second execution.
    Bug caught: a check that takes every expired job, or compares the wrong id."""
    job = _running("stalled@host", 32)
    presence.announce("stalled@host", 32, incarnation="inc-s", held=[uuid.uuid4(), job.delivery_id], ttl_s=30)
    assert recover_stuck(utcnow() + seconds(60)) == {"requeued": 0, "dead": 0, "stopped": 0, "lease_late": 1}
    assert ledger_view.job(job.id).state == JobState.RUNNING


def test_the_health_worker_count_reads_live_incarnations_without_a_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug caught: /health/ready SCANning the whole keyspace, or counting stale incarnations."""
    ttl = get_settings().presence_ttl_seconds
    for n in range(3):
        presence.announce(f"w{n}@host", 100 + n, incarnation=f"live-{n}", held=[], ttl_s=ttl)
    presence.announce("gone@host", 200, incarnation="stale", held=[], ttl_s=ttl, now=time.time() - 10 * ttl)

    def no_scan(*_: Any, **__: Any) -> Any:
        raise AssertionError("the worker count must not SCAN the keyspace")

    for name in ("scan", "scan_iter", "keys"):
        monkeypatch.setattr(redis.Redis, name, no_scan)
    assert _workers()["processes_with_heartbeat"] == 3
    monkeypatch.undo()
    assert get_redis().zcard(redis_keys.workers_live()) == 3, "the stale incarnation was pruned"


def test_the_heartbeat_announces_its_incarnation_and_the_deliveries_it_holds() -> None:
    """Bug caught: a heartbeat that writes presence without its held deliveries (every expired
    job would be taken from a stalled worker), or one id shared by two process starts."""
    from worker.runtime.heartbeat import Heartbeat

    first, second = Heartbeat("beat@host"), Heartbeat("beat@host")
    for hb in (first, second):  # beat by hand: a background beat could interleave with ours
        hb.stop()
        hb._thread.join(5)
    get_redis().delete(redis_keys.worker_presence("beat@host", first.pid))
    try:
        job_id, delivery_id = uuid.uuid4(), uuid.uuid4()
        first.track(job_id, delivery_id, "q-beat")
        first.beat()
        [seen] = presence.lookup([("beat@host", first.pid)])
        assert seen is not None and seen.incarnation == first.incarnation
        assert seen.holds(delivery_id) and not seen.holds(uuid.uuid4())
        first.untrack(job_id)
        first.beat()
        [seen] = presence.lookup([("beat@host", first.pid)])
        assert seen is not None and not seen.holds(delivery_id), "an untracked delivery leaves the presence"
        second.beat()
        [seen] = presence.lookup([("beat@host", second.pid)])
        assert seen is not None and seen.incarnation == second.incarnation != first.incarnation
        assert not seen.holds(delivery_id), "a new incarnation holds nothing of the old one"
    finally:
        get_redis().delete(redis_keys.worker_presence("beat@host", first.pid))


def test_a_presence_value_the_heartbeat_could_not_have_written_protects_nothing() -> None:
    """Only medic's heartbeat writes presence keys (a JSON object with the held deliveries).
    Bug caught: an unreadable or foreign value taken to hold every delivery, so an expired job
    stays `running` for ever behind a key nobody refreshes."""
    job = _running("odd@host", 41)
    key = redis_keys.worker_presence("odd@host", 41)
    for value in ("1", "not json", '{"incarnation": "x"}'):
        get_redis().set(key, value, ex=30)
        assert presence.lookup([("odd@host", 41)]) == [None], value
    assert recover_stuck(utcnow() + seconds(60)) == {"requeued": 1, "dead": 0, "stopped": 0, "lease_late": 0}
    assert ledger_view.job(job.id).state == JobState.QUEUED
