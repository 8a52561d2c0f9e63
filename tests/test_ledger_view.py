"""The overlap check of the chaos tests can fail: fed two overlapping executions, it raises."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tests.ledger_view import Execution, assert_disjoint, assert_no_overlap, job
from tests.testjobs import _job_key, get_redis
from worker.accept import enqueue
from worker.clock import utcnow
from worker.ledger import db, transitions


def test_two_overlapping_intervals_fail_and_two_disjoint_pass() -> None:
    first = Execution("j", "d1", start=10.0, end=20.0)
    assert_disjoint([first, Execution("j", "d2", start=20.0, end=30.0)])
    assert_disjoint([first, Execution("other-job", "d3", start=15.0, end=30.0)])
    with pytest.raises(AssertionError, match="overlapping"):
        assert_disjoint([Execution("j", "d2", start=19.0, end=30.0), first])


def _two_deliveries() -> tuple[uuid.UUID, str, str]:
    """A job claimed by delivery 1, given back, then claimed by delivery 2 (in the ledger only)."""
    row = enqueue("examples.echo", {"message": "x"}, tenant="view", queue="nobody-consumes-this").job
    with db.begin() as conn:
        claimed = transitions.claim(conn, row.id, row.delivery_id, worker="w", pid=1, now=utcnow(), lease_s=30)
        assert claimed is not None
        back = transitions.give_back(
            conn, claimed, reason="error", actor="w", now=utcnow(), max_backoff_s=0, immediate=True
        )
        assert back is not None and back.state == "queued"
    with db.begin() as conn:
        assert transitions.claim(conn, row.id, back.delivery_id, worker="w", pid=1, now=utcnow(), lease_s=30)
    return row.id, str(row.delivery_id), str(back.delivery_id)


def _record(job_id: uuid.UUID, delivery: str, start: float, end: float) -> None:
    entry = {"pid": 999_999, "start": start, "end": end, "job": str(job_id), "delivery": delivery}
    get_redis().hset(_job_key(str(job_id)), delivery, json.dumps(entry))


def test_an_execution_outliving_its_delivery_fails_the_ledger_check(medic_env: dict[str, str]) -> None:
    """Delivery 1's process ends after delivery 2 was claimed: the check must raise; the same
    job with delivery 1 ending before the second claim passes."""
    job_id, d1, d2 = _two_deliveries()
    second_claim = job(job_id).started_at.timestamp()
    _record(job_id, d1, second_claim - 1, second_claim - 0.5)
    _record(job_id, d2, second_claim + 0.001, second_claim + 0.002)
    assert_no_overlap([job_id])

    _record(job_id, d1, second_claim - 1, second_claim + 5)
    with pytest.raises(AssertionError, match="overlapping"):
        assert_no_overlap([job_id])


def test_an_execution_without_a_claim_fails(medic_env: dict[str, str]) -> None:
    job_id, _, _ = _two_deliveries()
    _record(job_id, str(uuid.uuid4()), time.time(), time.time())
    with pytest.raises(AssertionError, match="without a claim"):
        assert_no_overlap([job_id])
