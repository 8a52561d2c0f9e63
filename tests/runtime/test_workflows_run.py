"""Workflows on real `celery worker` processes, built with the library's canvas: every step
starts only after every step it waits for has finished (from the ledger's started_at and
finished_at, and from a history the steps write to a file outside the ledger), results are
passed, and a dead step cancels its dependents under fail_fast but not under continue."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ledger_view import job, reasons
from tests.testjobs import wf_step
from worker import chain, chord, group, sig
from worker.accept.workflow import AcceptedWorkflow
from worker.ledger import db, queries, workflows
from worker.ledger.workflows import Step
from worker.runtime.signature import Signature
from worker.testing.processes import Processes, wait_for

QUEUE = "q-flow"


@pytest.fixture(scope="module")
def flow_worker(medic_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One worker with 2 prefork children on this module's own queue."""
    p = Processes(medic_env, tmp_path_factory.mktemp("flow"))
    p.worker("flow", queues=QUEUE, concurrency=2)
    yield
    p.stop_all()


def s(history: Path, name: str, **args: Any) -> Signature:
    return wf_step.s(history=str(history), name=name, **args).set(name=name, queue=QUEUE)  # type: ignore[attr-defined, no-any-return]


def _finished(accepted: AcceptedWorkflow) -> dict[str, Step]:
    def done() -> dict[str, Step] | None:
        with db.connect() as conn:
            wf = workflows.get_workflow(conn, accepted.id)
            steps = workflows.get_steps(conn, accepted.id)
        assert wf is not None
        return {st.name: st for st in steps} if wf.state != "running" else None

    return wait_for(done, 60, 0.1, f"workflow {accepted.id} finished")


def _history(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _assert_each_step_after_its_predecessors(steps: dict[str, Step], lines: list[dict[str, Any]]) -> None:
    position = {(ln["step"], ln["event"]): i for i, ln in enumerate(lines)}
    for st in steps.values():
        if st.state != "succeeded":
            continue
        for pred in st.after:
            before = steps[pred]
            assert before.finished_at is not None and st.started_at is not None
            assert before.finished_at <= st.started_at, f"{st.name} started before {pred} finished (ledger)"
            ended = position.get((pred, "end"), position.get((pred, "failed")))
            assert ended is not None and ended < position[(st.name, "start")], f"{st.name} before {pred} (history)"


def test_a_chain_of_a_group_and_a_chord_runs_each_step_after_all_it_waits_for(
    flow_worker: None, tmp_path: Path
) -> None:
    """Given chain(a, group(b, c), chord(group(d, e), f)), When it is submitted,
    Then b and c run after a, d and e after b and c, f after d and e; b, c get a's result, f
    gets d's and e's; every step ran once and the workflow succeeded."""
    history = tmp_path / "history.jsonl"
    canvas = chain(
        s(history, "a"),
        group(s(history, "b", seconds=0.3), s(history, "c")),
        chord(group(s(history, "d"), s(history, "e", seconds=0.3)), s(history, "f")),
    )
    accepted = canvas.submit(tenant=f"flow-{uuid.uuid4().hex[:6]}")
    assert {j.step: j.state for j in accepted.jobs} == {
        "a": "queued", "b": "waiting", "c": "waiting", "d": "waiting", "e": "waiting", "f": "waiting"
    }  # fmt: skip
    steps = _finished(accepted)
    assert {n: st.state for n, st in steps.items()} == dict.fromkeys("abcdef", "succeeded")
    assert steps["d"].after == ["b", "c"] and steps["f"].after == ["d", "e"]
    _assert_each_step_after_its_predecessors(steps, _history(history))
    assert all(st.attempts == 1 for st in steps.values())
    f = job(steps["f"].job_id)
    assert f.result["saw"] == ["d", "e"]
    assert f.result["results"]["e"]["step"] == "e"
    assert job(steps["b"].job_id).result["saw"] == ["a"]
    assert job(steps["d"].job_id).result["saw"] == ["b", "c"]


def _failing(history: Path) -> chain:
    """a, then b (dead at once) and c in parallel, then d waiting for both."""
    return chain(
        s(history, "a"),
        group(s(history, "b", fail=True).set(max_attempts=1), s(history, "c", seconds=0.3)),
        s(history, "d"),
    )


def test_fail_fast_cancels_the_dependents_of_a_dead_step(flow_worker: None, tmp_path: Path) -> None:
    """Given a -> (b fails, c) -> d under fail_fast, When b is dead, Then d is cancelled
    (reason workflow_failed) and never runs, c still succeeds, and the workflow is failed."""
    history = tmp_path / "history.jsonl"
    accepted = _failing(history).submit(tenant=f"flow-{uuid.uuid4().hex[:6]}")
    steps = _finished(accepted)
    assert {n: st.state for n, st in steps.items()} == {
        "a": "succeeded", "b": "dead", "c": "succeeded", "d": "cancelled"
    }  # fmt: skip
    assert reasons(steps["d"].job_id)[-1] == "workflow_failed"
    assert "d" not in {ln["step"] for ln in _history(history)}, "a cancelled step never ran"
    with db.connect() as conn:
        assert workflows.get_workflow(conn, accepted.id).state == "failed"  # type: ignore[union-attr]


def test_continue_runs_the_dependents_of_a_dead_step_with_the_results_there_are(
    flow_worker: None, tmp_path: Path
) -> None:
    """The same DAG under continue: d runs after b and c ended, with c's result only."""
    history = tmp_path / "history.jsonl"
    accepted = _failing(history).submit(tenant=f"flow-{uuid.uuid4().hex[:6]}", failure_policy="continue")
    steps = _finished(accepted)
    assert {n: st.state for n, st in steps.items()} == {
        "a": "succeeded", "b": "dead", "c": "succeeded", "d": "succeeded"
    }  # fmt: skip
    _assert_each_step_after_its_predecessors(steps, _history(history))
    assert job(steps["d"].job_id).result["saw"] == ["c"], "b is dead: only c has a result to pass"
    with db.connect() as conn:
        assert workflows.get_workflow(conn, accepted.id).state == "failed"  # type: ignore[union-attr]


def test_a_step_whose_process_dies_on_its_last_attempt_cancels_its_dependents_at_once(
    flow_worker: None, tmp_path: Path
) -> None:
    """Given a -> b where a kills its own process (examples.crash, max_attempts 1), When the
    worker's main process reports the lost child, Then a is dead and b cancelled in that same
    report's transaction: no control loop runs here, so nothing else could have."""
    crash = sig("examples.crash").set(name="a", queue=QUEUE, max_attempts=1)
    accepted = chain(crash, s(tmp_path / "history.jsonl", "b")).submit(tenant=f"flow-{uuid.uuid4().hex[:6]}")
    steps = _finished(accepted)
    assert {n: st.state for n, st in steps.items()} == {"a": "dead", "b": "cancelled"}
    with db.connect() as conn:
        [*_, cancelled] = queries.get_events(conn, steps["b"].job_id)
    assert cancelled.reason == "workflow_failed" and cancelled.actor.startswith("flow@"), cancelled
