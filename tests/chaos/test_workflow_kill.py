"""A worker SIGKILLed as the last step of a fan-in finishes: the callback is still released.

The release is written in the transaction that records the step's success, so the window that
matters is the one right after that COMMIT, before the released step's message is sent: a kill
there must lose nothing. (A kill before the COMMIT leaves the step running: it is run again and
releases then, the ordinary worker_lost path.) The step's body arms a trap that SIGKILLs its own
prefork child at its next publish, which is the one that follows the finalize's COMMIT."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.ledger_view import assert_no_overlap, job
from tests.testjobs import wf_step
from worker import chord, group
from worker.ledger import db, queries, workflows
from worker.runtime.signature import Signature
from worker.testing.processes import Processes, wait_for

QUEUE = "chaos-flow"


def _s(history: Path, name: str, **args: Any) -> Signature:
    return wf_step.s(history=str(history), name=name, **args).set(name=name, queue=QUEUE)  # type: ignore[attr-defined, no-any-return]


def test_sigkill_right_after_the_last_fan_in_step_commits_still_releases_the_callback(
    cprocs: Processes, tmp_path: Path
) -> None:
    """Given chord(group(h1, h2, last), callback) where `last` finishes after h1 and h2 and its
    process is SIGKILLed right after its finalize commits (before any message is sent),
    When the control loops run,
    Then the callback was released by that very transaction (its `released` event is the
    worker's), its lost message is re-sent by reconcile, it runs once after all three with their
    results, and `last` was not run again."""
    worker = cprocs.worker("chaos-flow", queues=QUEUE, concurrency=2)
    cprocs.control_plane()
    history = tmp_path / "history.jsonl"
    header = group(_s(history, "h1"), _s(history, "h2"), _s(history, "last", after_succeeded=["h1", "h2"],
                                                            kill_after_finalize=True))  # fmt: skip
    accepted = chord(header, _s(history, "callback")).submit(tenant="chaos")

    def finished() -> dict[str, workflows.Step] | None:
        with db.connect() as conn:
            wf = workflows.get_workflow(conn, accepted.id)
            steps = {st.name: st for st in workflows.get_steps(conn, accepted.id)}
        assert wf is not None
        return steps if wf.state != "running" else None

    steps = wait_for(finished, 90, 0.2, "workflow finished")
    lines = [json.loads(ln) for ln in history.read_text().splitlines()]
    killed = [ln for ln in lines if ln["event"] == "killing"]
    assert [ln["step"] for ln in killed] == ["last"], "the trap was armed once, by `last`"
    # (its PID is no proof: the replacement child may get the killed one's)
    # the main process notices a dead child on its own schedule: wait for its line
    wait_for(lambda: f"pid:{killed[0]['pid']} exited with 'signal 9 (SIGKILL)'" in worker.log(), 30, 0.1, "kill seen")

    assert {n: st.state for n, st in steps.items()} == dict.fromkeys(("h1", "h2", "last", "callback"), "succeeded")
    assert steps["last"].attempts == 1, "its success was committed before the kill: not run again"
    with db.connect() as conn:
        events = queries.get_events(conn, steps["callback"].job_id)
    [released] = [e for e in events if e.reason == "released"]
    assert released.actor.startswith("chaos-flow@"), f"released by {released.actor}, not in the step's finalize"
    assert "message_lost" in [e.reason for e in events], "its message was never sent: reconcile re-sent it"
    assert [ln["step"] for ln in lines if ln["event"] == "start"].count("callback") == 1
    assert steps["callback"].started_at >= steps["last"].finished_at  # type: ignore[operator]
    assert job(steps["callback"].job_id).result["saw"] == ["h1", "h2", "last"]
    assert_no_overlap([st.job_id for st in steps.values()])
