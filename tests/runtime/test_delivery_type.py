"""The ledger, not the message, decides what runs: a delivery whose task name is not the job's
type runs nothing (anyone who can write to the broker could otherwise run function X on job Y's
args), fails that delivery, and the retry medic publishes names the job's own type."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

from tests import ledger_view
from worker import enqueue
from worker.ledger.states import JobState
from worker.runtime import task
from worker.runtime.registry import get_spec


def test_a_delivery_naming_another_job_type_runs_nothing(medic_env: dict[str, str]) -> None:
    # Bug caught: the function named by the message run on the row the claim returned.
    calls: list[dict[str, Any]] = []
    echo = get_spec("examples.echo")
    recording = dataclasses.replace(echo, func=lambda **kw: calls.append(kw) or {"ran": "echo"})
    victim = enqueue("examples.fail", {"message": "m"}, queue="void-q", max_attempts=3).job
    forged_task = SimpleNamespace(request=SimpleNamespace(hostname="forger@test"))

    task.execute(recording, forged_task, victim.id, victim.delivery_id)  # type: ignore[arg-type]

    assert calls == []
    after = ledger_view.job(victim.id)
    assert after.state == JobState.QUEUED and after.attempts == 1
    assert after.error["type"] == task.TYPE_MISMATCH
    assert "examples.echo" in after.error["message"] and "examples.fail" in after.error["message"]
    assert after.delivery_id != victim.delivery_id, "retried with a fresh delivery"
    assert after.result is None
