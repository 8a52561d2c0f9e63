"""The pure logic of cancel requests and progress, in-process: what `current_job()` keeps, what the
heartbeat takes from it, the fence's grace, the CLI's progress line and the bulk filter."""

from __future__ import annotations

import threading
import uuid

import pytest
from pydantic import ValidationError

from api.schemas import CancelFilter
from worker import current_job
from worker.background import BackgroundThread
from worker.ops.follow import describe
from worker.runtime import current, fencing
from worker.testing.processes import wait_for


@pytest.mark.parametrize("fraction", [-0.01, 1.01, float("nan"), float("inf"), True, "0.5", None])
def test_a_fraction_outside_0_to_1_is_refused(fraction: object) -> None:
    with pytest.raises(ValueError, match="fraction"):
        current.validate(fraction, None)


def test_a_report_is_kept_as_given_with_its_message_cut_and_nul_escaped() -> None:
    assert current.validate(0, None) == {"fraction": 0.0, "message": None}
    assert current.validate(1, "done") == {"fraction": 1.0, "message": "done"}
    assert current.validate(0.5, "a\x00b")["message"] == "a\\x00b"
    assert len(current.validate(0.5, "x" * 10_000)["message"]) == current.MAX_MESSAGE
    with pytest.raises(ValueError, match="message"):
        current.validate(0.5, 5)


def test_outside_a_job_there_is_no_current_job() -> None:
    with pytest.raises(LookupError):
        current_job()


def test_a_thousand_reports_are_one_write_and_an_unchanged_one_is_none() -> None:
    job_id, delivery = uuid.uuid4(), uuid.uuid4()
    with current.running(job_id, delivery):
        me = current_job()
        for i in range(1, 1001):
            me.progress(i / 1000, f"call {i}")
        assert current.take_progress({job_id: delivery}) == {
            job_id: (delivery, {"fraction": 1.0, "message": "call 1000"})
        }
        assert current.take_progress({job_id: delivery}) == {}, "sent already"
        me.progress(1.0, "call 1000")
        assert current.take_progress({job_id: delivery}) == {}, "the same report again is no change"
        me.progress(0.5, "back")
        assert current.take_progress({job_id: uuid.uuid4()}) == {}, "another delivery's heartbeat"
        taken = current.take_progress({job_id: delivery})
        current.unsend(taken)  # the write failed: the next beat sends it
        assert current.take_progress({job_id: delivery}) == taken
    assert current.take_progress({job_id: delivery}) == {}, "the run is over"


def test_a_cancel_request_is_learned_once_and_only_for_a_running_job() -> None:
    job_id, delivery = uuid.uuid4(), uuid.uuid4()
    assert current.mark_cancel_requested([job_id]) == set(), "not running here"
    with current.running(job_id, delivery):
        me = current_job()
        assert not me.cancelled()
        assert current.mark_cancel_requested([job_id, uuid.uuid4()]) == {job_id}
        assert me.cancelled()
        assert current.mark_cancel_requested([job_id]) == set(), "learned already: its grace runs once"


def test_threads_see_their_own_job() -> None:
    seen: dict[str, uuid.UUID] = {}

    def run(name: str, job_id: uuid.UUID) -> None:
        with current.running(job_id, uuid.uuid4()):
            seen[name] = current_job().id

    ids = {"a": uuid.uuid4(), "b": uuid.uuid4()}
    threads = [threading.Thread(target=run, args=item) for item in ids.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert seen == ids


def test_the_fence_stops_a_job_at_the_end_of_its_grace_and_no_renewal_extends_it() -> None:
    """In-process (not a pool child): the job is marked lost once the grace is over, so
    still_owner() turns False, and a lease extension after the request cannot push the deadline
    past the grace."""
    fence = fencing.Fence()
    try:
        token = fencing.FencingToken(uuid.uuid4(), uuid.uuid4(), 1)
        holding = fence.hold(token, sent_at=fencing.clock(), lease_s=300)
        fence.stop_within(token.job_id, 0.3)
        fence.confirm({token.job_id: token.delivery_id}, [token.job_id], sent_at=fencing.clock(), lease_s=300)
        assert holding.deadline <= holding.stop_by < fencing.clock() + 1
        with fencing.running(holding):
            assert fencing.still_owner()
            wait_for(lambda: not fencing.still_owner(), 5, 0.02, "the grace to end")
        assert "cancel" in holding.lost
    finally:
        fence.stop()


def test_the_cli_prints_a_progress_event_as_a_percentage() -> None:
    job_id = str(uuid.uuid4())
    progress = {"job_id": job_id, "from_state": "running", "to_state": "running", "attempt": 1,
                "reason": "progress", "detail": '{"fraction":0.4,"message":"step 2 of 5"}'}  # fmt: skip
    assert describe(progress) == f"{job_id[:8]} running 40% step 2 of 5"
    moved = {**progress, "to_state": "succeeded", "reason": "succeeded", "detail": None}
    assert describe(moved) == f"{job_id[:8]} running -> succeeded (attempt 1, succeeded)"


@pytest.mark.parametrize("body", [{}, {"state": None}, {"state": "dead"}, {"queue": "q", "colour": "red"}])
def test_a_bulk_filter_names_at_least_one_known_field(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        CancelFilter.model_validate(body)


def test_a_bulk_filter_of_one_field_is_enough() -> None:
    assert CancelFilter.model_validate({"state": "running"}).state == "running"


def test_wake_runs_the_next_step_now() -> None:
    """The cancel broadcast's fast path: a heartbeat woken beats at once, not after its period."""
    runs: list[int] = []
    thread = BackgroundThread("medic-test-wake", lambda: runs.append(1), every_s=60).start()
    try:
        wait_for(lambda: len(runs) == 1, 5, 0.01, "the first run")
        thread.wake()
        wait_for(lambda: len(runs) == 2, 5, 0.01, "a run right after wake()")
    finally:
        thread.stop()
        assert thread.join(5)


def test_a_run_that_left_its_job_cancelled_is_counted_as_cancelled() -> None:
    """medic_jobs_finished_total: a run whose cancel was requested is `cancelled`, even when the
    function returned (not a success) or its process was killed (not a lost worker)."""
    from types import SimpleNamespace

    from worker.runtime.job_metrics import FinishedOutcome, outcome_label
    from worker.runtime.outcome import OutcomeKind

    stopped = SimpleNamespace(state="cancelled")
    for kind in (OutcomeKind.SUCCEEDED, OutcomeKind.WORKER_LOST, OutcomeKind.FAILED):
        assert outcome_label(kind, stopped) == FinishedOutcome.CANCELLED  # type: ignore[arg-type]
    assert outcome_label(OutcomeKind.SUCCEEDED, SimpleNamespace(state="succeeded")) == FinishedOutcome.SUCCEEDED  # type: ignore[arg-type]
