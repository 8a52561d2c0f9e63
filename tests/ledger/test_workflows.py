"""Workflows in the ledger, on PostgreSQL and SQLite: a step's end releases (or cancels) its
dependents in its own transaction, and the repair reads the truth from the steps' states.

The DAG of every test: a -> (b, c) -> d, d asking for the results of b and c."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from tests.ledger.make import a_new_job
from worker.clock import utcnow
from worker.ledger import queries, release, transitions, workflows
from worker.ledger.models import workflow_steps
from worker.ledger.records import Job
from worker.ledger.workflows import FailurePolicy, NewStep, NewWorkflow

SHAPE = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")}
ACTOR = "test"


def _create(engine: sa.Engine, policy: FailurePolicy = FailurePolicy.FAIL_FAST) -> dict[str, Job]:
    workflow_id, now = uuid.uuid4(), utcnow()
    steps = []
    for name, after in SHAPE.items():
        args: dict[str, Any] = {"results": {}} if name == "d" else {"message": name}
        job = dataclasses.replace(a_new_job(args=args, max_attempts=1), workflow_id=workflow_id, step=name)
        steps.append(NewStep(name, after, name == "d", job))
    new = NewWorkflow(workflow_id, "ledger-tests", "wf", policy, now, tuple(steps))
    with engine.begin() as conn:
        written = workflows.create_workflow(conn, new, actor=ACTOR, now=now)
    return {job.step or "": job for job in written}


def _run(engine: sa.Engine, job: Job, *, ok: bool = True, follow: bool = True) -> list[Job]:
    """Claim `job` and end it (succeeded with {"from": step}, or dead), its follow-up in the same
    transaction as a worker's finalize (unless `follow` is False: a release lost)."""
    now = utcnow()
    with engine.begin() as conn:
        claimed = transitions.claim(conn, job.id, job.delivery_id, worker="w", pid=1, now=now, lease_s=30)
        assert claimed is not None, f"step {job.step} was not queued"
        if ok:
            ended = transitions.succeed(conn, job.id, job.delivery_id, {"from": job.step}, actor=ACTOR, now=now)
        else:
            ended = transitions.give_back(conn, claimed, reason="error", actor=ACTOR, now=now, max_backoff_s=1)
        assert ended is not None
        return release.step_ended(conn, ended, actor=ACTOR, now=now) if follow else []


def _states(engine: sa.Engine, jobs: dict[str, Job]) -> dict[str, str]:
    with engine.connect() as conn:
        return {name: queries.get_job(conn, job.id).state for name, job in jobs.items()}  # type: ignore[union-attr]


def _workflow_state(engine: sa.Engine, job: Job) -> str:
    assert job.workflow_id is not None
    with engine.connect() as conn:
        return workflows.get_workflow(conn, job.workflow_id).state  # type: ignore[union-attr]


def test_roots_are_queued_and_the_others_wait_unpublished(engine: sa.Engine) -> None:
    jobs = _create(engine)
    assert _states(engine, jobs) == {"a": "queued", "b": "waiting", "c": "waiting", "d": "waiting"}
    assert jobs["a"].published_at is not None and jobs["d"].published_at is None
    with engine.connect() as conn:
        assert [e.to_state for e in queries.get_events(conn, jobs["d"].id)] == ["waiting"]


def test_a_step_is_released_when_the_last_step_it_waits_for_succeeds_with_their_results(engine: sa.Engine) -> None:
    jobs = _create(engine)
    released = _run(engine, jobs["a"])
    assert sorted(j.step or "" for j in released) == ["b", "c"]
    assert all(j.state == "queued" and j.published_at is not None for j in released)
    assert _run(engine, jobs["b"]) == [], "d still waits for c"
    assert _states(engine, jobs)["d"] == "waiting"
    [d] = _run(engine, jobs["c"])
    assert d.step == "d" and d.state == "queued"
    assert d.args["results"] == {"b": {"from": "b"}, "c": {"from": "c"}}
    with engine.connect() as conn:
        events = queries.get_events(conn, d.id)
    assert [(e.from_state, e.to_state, e.reason) for e in events] == [
        (None, "waiting", "enqueued"),
        ("waiting", "queued", "released"),
    ]
    assert _workflow_state(engine, d) == "running"
    _run(engine, d)
    assert _workflow_state(engine, d) == "succeeded"


def test_fail_fast_cancels_every_transitive_dependent_and_fails_the_workflow(engine: sa.Engine) -> None:
    jobs = _create(engine, FailurePolicy.FAIL_FAST)
    cancelled = _run(engine, jobs["a"], ok=False)
    assert sorted(j.step or "" for j in cancelled) == ["b", "c", "d"]
    assert _states(engine, jobs) == {"a": "dead", "b": "cancelled", "c": "cancelled", "d": "cancelled"}
    with engine.connect() as conn:
        assert queries.get_events(conn, jobs["d"].id)[-1].reason == release.WORKFLOW_FAILED
    assert _workflow_state(engine, jobs["a"]) == "failed"


def test_continue_runs_dependents_once_their_predecessors_ended_with_only_the_successes_results(
    engine: sa.Engine,
) -> None:
    jobs = _create(engine, FailurePolicy.CONTINUE)
    _run(engine, jobs["a"])
    assert _run(engine, jobs["b"], ok=False) == []
    [d] = _run(engine, jobs["c"])
    assert d.args["results"] == {"c": {"from": "c"}}, "a dead step has no result to pass"
    _run(engine, d)
    assert _states(engine, jobs) == {"a": "succeeded", "b": "dead", "c": "succeeded", "d": "succeeded"}
    assert _workflow_state(engine, d) == "failed", "a dead step fails the workflow, whatever ran after it"


def test_repair_releases_steps_whose_release_was_lost(engine: sa.Engine) -> None:
    jobs = _create(engine)
    _run(engine, jobs["a"], follow=False)  # succeeded, its release lost
    assert _states(engine, jobs)["b"] == "waiting"
    with engine.begin() as conn:
        changed = release.repair(conn, workflow_id=jobs["a"].workflow_id, actor=ACTOR, now=utcnow())  # type: ignore[arg-type]
    assert sorted(j.step or "" for j in changed) == ["b", "c"]
    with engine.connect() as conn:
        pending = dict(conn.execute(sa.select(workflow_steps.c.name, workflow_steps.c.pending)).all())
    assert pending["b"] == 0 and pending["d"] == 2
    with engine.begin() as conn:
        assert release.repair(conn, workflow_id=jobs["a"].workflow_id, actor=ACTOR, now=utcnow()) == []  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", [FailurePolicy.FAIL_FAST, FailurePolicy.CONTINUE])
def test_repair_follows_a_dead_step_as_its_policy_says(engine: sa.Engine, policy: FailurePolicy) -> None:
    jobs = _create(engine, policy)
    _run(engine, jobs["a"], ok=False, follow=False)  # dead without its follow-up (a recovery loop's)
    with engine.begin() as conn:
        release.repair(conn, workflow_id=jobs["a"].workflow_id, actor=ACTOR, now=utcnow())  # type: ignore[arg-type]
    expected = "cancelled" if policy is FailurePolicy.FAIL_FAST else "queued"
    assert _states(engine, jobs)["b"] == expected
    assert _states(engine, jobs)["d"] == ("cancelled" if policy is FailurePolicy.FAIL_FAST else "waiting")


def test_a_cancelled_root_cancels_the_rest_at_the_repair_and_the_workflow_is_cancelled(engine: sa.Engine) -> None:
    """A cancel writes no follow-up of its own: the repair sees the cancelled step and acts."""
    jobs = _create(engine, FailurePolicy.FAIL_FAST)
    with engine.begin() as conn:
        assert transitions.cancel(conn, jobs["a"].id, "ledger-tests", actor=ACTOR, now=utcnow()) is not None
        release.repair(conn, workflow_id=jobs["a"].workflow_id, actor=ACTOR, now=utcnow())  # type: ignore[arg-type]
    assert _states(engine, jobs) == dict.fromkeys("abcd", "cancelled")
    assert _workflow_state(engine, jobs["a"]) == "cancelled", "cancelled, none dead: not failed"
