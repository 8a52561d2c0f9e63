"""repair_workflows, called as a plain function of `now`: workflows broken by hand in the
ledger (a release removed, a dead step's follow-up never written, the last step's finish
missing) are brought back in line with their steps' states, and counted."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa

from tests.ledger_view import job
from worker import enqueue_workflow
from worker.accept.dag import StepRequest
from worker.accept.validate import JobRequest
from worker.accept.workflow import AcceptedWorkflow
from worker.clock import utcnow
from worker.control.prune import prune
from worker.control.recover import recover_stuck
from worker.control.repair_workflows import ACTOR, repair_workflows
from worker.control.timeouts import enforce_timeouts
from worker.ledger import db, queries, transitions, workflows
from worker.ledger.models import jobs, workflow_steps
from worker.ledger.records import Job
from worker.settings import get_settings

pytestmark = pytest.mark.usefixtures("private_ledger")
PARKED = "nobody-consumes-this"  # a declared queue no worker reads: released steps stay queued


def _step(name: str, *after: str) -> StepRequest:
    return StepRequest(name, JobRequest("examples.echo", {"message": name}, queue=PARKED, max_attempts=1), after)


def _submit(policy: str = "fail_fast") -> AcceptedWorkflow:
    """a -> b -> c, all parked."""
    return enqueue_workflow([_step("a"), _step("b", "a"), _step("c", "b")], tenant="repair", failure_policy=policy)


def _end_without_follow_up(row: Job, *, ok: bool = True) -> None:
    """What a recovery loop or a hand edit leaves: the step ended, its dependents untouched."""
    now = utcnow()
    with db.begin() as conn:
        claimed = transitions.claim(conn, row.id, row.delivery_id, worker="w", pid=1, now=now, lease_s=30)
        assert claimed is not None
        if ok:
            transitions.succeed(conn, row.id, row.delivery_id, {"ok": True}, actor="hand", now=now)
        else:
            transitions.give_back(conn, claimed, reason="error", actor="hand", now=now, max_backoff_s=1)


def _repair() -> dict[str, int]:
    return repair_workflows(utcnow(), limit=1000)


def test_a_release_removed_by_hand_is_repaired_once(medic_env: dict[str, Any]) -> None:
    """Given a workflow whose first step succeeded but whose release was removed (b waiting,
    pending 1), When the loop runs, Then b is queued by the loop, and a second run does nothing."""
    accepted = _submit()
    _end_without_follow_up(accepted.job_of("a"))
    b = accepted.job_of("b")
    assert job(b.id).state == "waiting"
    counts = _repair()
    assert counts["released"] >= 1
    assert job(b.id).state == "queued"
    with db.connect() as conn:
        [*_, released] = queries.get_events(conn, b.id)
    assert (released.from_state, released.to_state, released.actor) == ("waiting", "queued", ACTOR)
    assert job(accepted.job_of("c").id).state == "waiting", "c still waits for b"
    assert _repair()["released"] == 0


def test_a_release_undone_in_the_database_is_repaired(medic_env: dict[str, Any]) -> None:
    """Given b released, then put back by hand (state waiting, pending 1), When the loop runs,
    Then b is queued again."""
    accepted = _submit()
    _end_without_follow_up(accepted.job_of("a"))
    _repair()
    b = accepted.job_of("b")
    with db.begin() as conn:
        conn.execute(sa.update(jobs).where(jobs.c.id == b.id).values(state="waiting"))
        conn.execute(
            sa.update(workflow_steps)
            .where(workflow_steps.c.workflow_id == accepted.id, workflow_steps.c.name == "b")
            .values(pending=1)
        )
    assert _repair()["released"] >= 1
    assert job(b.id).state == "queued"


def test_a_dead_step_without_its_follow_up_cancels_its_dependents_and_fails_the_workflow(
    medic_env: dict[str, Any],
) -> None:
    accepted = _submit("fail_fast")
    _end_without_follow_up(accepted.job_of("a"), ok=False)
    assert _repair()["cancelled"] >= 2
    assert [job(accepted.job_of(n).id).state for n in "abc"] == ["dead", "cancelled", "cancelled"]
    with db.connect() as conn:
        assert workflows.get_workflow(conn, accepted.id).state == "failed"  # type: ignore[union-attr]


def test_prune_deletes_finished_workflows_past_retention_and_keeps_running_ones(medic_env: dict[str, Any]) -> None:
    done = enqueue_workflow([_step("only")], tenant="repair")
    _end_without_follow_up(done.job_of("only"))
    _repair()  # finishes it: its one step is terminal
    running = _submit()
    retention = dt.timedelta(days=get_settings().retention_days)
    assert prune(utcnow() + retention - dt.timedelta(hours=1))["workflows_deleted"] == 0
    assert prune(utcnow() + retention + dt.timedelta(hours=1))["workflows_deleted"] >= 1
    with db.connect() as conn:
        assert workflows.get_workflow(conn, done.id) is None
        assert workflows.get_steps(conn, done.id) == []
        assert workflows.get_workflow(conn, running.id) is not None
        assert conn.scalar(sa.select(sa.func.count()).where(workflow_steps.c.workflow_id == done.id)) == 0


def _claim_as_ghost(row: Job, *, lease_s: float = 1) -> None:
    """`row` running on a worker that is gone (no presence key): what recover_stuck takes."""
    now = utcnow()
    with db.begin() as conn:
        claimed = transitions.claim(
            conn, row.id, row.delivery_id, worker="ghost@nowhere", pid=4242, now=now, lease_s=lease_s
        )
        assert claimed is not None


def test_a_step_recover_stuck_gives_up_on_cancels_its_dependents_in_the_same_run(medic_env: dict[str, Any]) -> None:
    """Given a fail_fast a -> b -> c whose a (one attempt) ran on a worker that vanished, When
    recover_stuck declares a dead, Then b and c are cancelled and the workflow failed by that same
    run, not 30 s later by the repair loop (which then finds nothing to do)."""
    accepted = _submit("fail_fast")
    _claim_as_ghost(accepted.job_of("a"))
    assert recover_stuck(utcnow() + dt.timedelta(seconds=60))["dead"] == 1
    assert [job(accepted.job_of(n).id).state for n in "abc"] == ["dead", "cancelled", "cancelled"]
    with db.connect() as conn:
        assert workflows.get_workflow(conn, accepted.id).state == "failed"  # type: ignore[union-attr]
    assert _repair()["cancelled"] == 0


def test_a_step_enforce_timeouts_gives_up_on_releases_its_dependent_under_continue(medic_env: dict[str, Any]) -> None:
    """Given a `continue` a -> b -> c whose a (one attempt) overran its timeout, When
    enforce_timeouts declares a dead, Then b is released (queued, published) by that same run."""
    accepted = _submit("continue")
    _claim_as_ghost(accepted.job_of("a"), lease_s=3600)
    timeout = job(accepted.job_of("a").id).timeout_s
    assert enforce_timeouts(utcnow() + dt.timedelta(seconds=timeout + 3600))["dead"] == 1
    b = job(accepted.job_of("b").id)
    assert (b.state, b.published_at is not None) == ("queued", True)
    assert job(accepted.job_of("c").id).state == "waiting"
    assert _repair()["released"] == 0
