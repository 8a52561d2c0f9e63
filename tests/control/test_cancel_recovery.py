"""The backstops of a durable cancel (issue 20, part 3): a running job whose cancel was requested
and whose worker is gone, or which ran past its timeout, is stopped (`cancelled`), never retried,
by the loops; the clock is passed in, no waiting for leases."""

from __future__ import annotations

from typing import Any

import pytest

from tests import ledger_view
from tests.control.fabricate import empty_ledger, running_job
from worker.broker import inspect
from worker.clock import seconds, utcnow
from worker.control.recover import recover_stuck
from worker.control.timeouts import enforce_timeouts
from worker.ledger import db, transitions
from worker.ledger.records import Job
from worker.ledger.states import JobState

pytestmark = pytest.mark.usefixtures("private_ledger")


@pytest.fixture(autouse=True)
def _empty_ledger() -> None:
    empty_ledger()


def _asked_to_stop(**row: Any) -> Job:
    job = running_job("cancel-loops", "ghost@nowhere", 4242, max_attempts=3, **row)
    with db.begin() as conn:
        assert transitions.cancel(conn, job.id, "cancel-loops", actor="api:k", now=utcnow()) is not None
    return job


def test_recover_stops_a_job_asked_to_stop_whose_worker_is_gone() -> None:
    job = _asked_to_stop()
    assert recover_stuck(utcnow() + seconds(60)) == {"requeued": 0, "dead": 0, "stopped": 1, "lease_late": 0}
    after = ledger_view.job(job.id)
    assert after.state == JobState.CANCELLED and after.finished_at is not None
    assert ledger_view.reasons(job.id)[-2:] == ["cancel_requested", "stopped"]
    assert inspect.depth(after.queue) == 0, "nothing was published: it must not run again"


def test_enforce_timeouts_stops_a_job_asked_to_stop() -> None:
    job = _asked_to_stop(timeout_s=1.0)
    assert enforce_timeouts(utcnow() + seconds(120)) == {"requeued": 0, "dead": 0, "stopped": 1}
    assert ledger_view.job(job.id).state == JobState.CANCELLED
    assert ledger_view.reasons(job.id)[-2:] == ["cancel_requested", "stopped"]
