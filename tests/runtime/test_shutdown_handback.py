"""The shutdown's hand-back in the ledger (worker/runtime/shutdown.py): once, fenced on the
delivery, at no cost in attempts, and never doubled by the lost-child report of the same kill."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from tests.ledger_view import job, reasons
from worker.accept import enqueue
from worker.clock import utcnow
from worker.ledger import db, transitions
from worker.ledger.records import Job
from worker.runtime import lost_child, shutdown
from worker.runtime.outcome import OutcomeKind

PID = 4242


@pytest.fixture
def running(medic_env: dict[str, str]) -> Iterator[Job]:
    """A job on its last attempt, claimed by process PID (in the ledger only)."""
    row = enqueue("examples.echo", {"message": "x"}, tenant="sd", queue="nobody-consumes-this", max_attempts=1).job
    with db.begin() as conn:
        claimed = transitions.claim(conn, row.id, row.delivery_id, worker="w", pid=PID, now=utcnow(), lease_s=30)
    assert claimed is not None and claimed.attempts == 1
    yield claimed
    lost_child.HANDED_BACK.discard(claimed.delivery_id)


def test_a_shutdown_hand_back_queues_the_job_once_at_no_cost_in_attempts(running: Job) -> None:
    """On its last attempt, the job is queued (not dead) with one more attempt allowed; `attempts`
    still counts the claim, so the next claim's fencing token is greater."""
    run = shutdown.Run(running.id, running.delivery_id, PID)
    [after] = shutdown.hand_back([run], actor="w:1", grace_s=2)
    assert after is not None and after.state == "queued", after
    assert (after.attempts, after.max_attempts) == (1, 2), after
    assert after.delivery_id != running.delivery_id
    assert shutdown.hand_back([run], actor="w:1", grace_s=2) == [None], "a second hand-back is fenced out"
    assert reasons(running.id).count("worker_shutdown") == 1


def test_a_hand_back_of_another_process_or_delivery_changes_nothing(running: Job) -> None:
    other_pid = shutdown.Run(running.id, running.delivery_id, PID + 1)
    other_delivery = shutdown.Run(running.id, uuid.uuid4(), PID)
    assert shutdown.hand_back([other_pid, other_delivery], actor="w:1", grace_s=2) == [None, None]
    assert job(running.id).state == "running"


def test_the_lost_child_report_leaves_a_delivery_being_handed_back_alone(running: Job) -> None:
    """The pool sees the child the deadline killed die, and MedicRequest reports it: with the
    delivery marked, the report writes nothing (else: worker_lost on the last attempt, dead)."""
    request = SimpleNamespace(
        args=[str(running.id), str(running.delivery_id)], worker_pid=PID, hostname="w", delivery_info={}
    )
    lost_child.HANDED_BACK.add(running.delivery_id)
    lost_child._report(request, OutcomeKind.WORKER_LOST)  # type: ignore[arg-type]
    assert job(running.id).state == "running", "the report took the job the shutdown hands back"
    [after] = shutdown.hand_back([shutdown.Run(running.id, running.delivery_id, PID)], actor="w:1", grace_s=2)
    assert after is not None and after.state == "queued"
    assert "worker_lost" not in reasons(running.id)


def test_an_ordinary_lost_child_still_spends_its_attempt(running: Job) -> None:
    """Control: the same report for a delivery nobody hands back ends the last attempt dead."""
    request = SimpleNamespace(
        args=[str(running.id), str(running.delivery_id)], worker_pid=PID, hostname="w", delivery_info={}
    )
    lost_child._report(request, OutcomeKind.WORKER_LOST)  # type: ignore[arg-type]
    assert job(running.id).state == "dead"
