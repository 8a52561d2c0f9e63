from __future__ import annotations

import pytest

from worker.broker.messages import kombu_priority
from worker.ledger.states import TERMINAL_STATES, TRANSITIONS, JobState, is_allowed
from worker.ledger.transitions import backoff_delay


def test_terminal_states_have_no_way_out_except_manual_retry_of_dead() -> None:
    for state in TERMINAL_STATES:
        allowed = TRANSITIONS[state]
        # a manual retry: queued, or held for a job the dispatcher starts
        assert allowed == ({JobState.QUEUED, JobState.HELD} if state == JobState.DEAD else set()), state


def test_timed_out_is_a_passing_state() -> None:
    assert TRANSITIONS[JobState.TIMED_OUT] == {JobState.QUEUED, JobState.HELD, JobState.DEAD}
    assert JobState.TIMED_OUT not in TERMINAL_STATES


@pytest.mark.parametrize(
    ("frm", "to", "ok"),
    [
        (JobState.QUEUED, JobState.RUNNING, True),
        (JobState.RUNNING, JobState.SUCCEEDED, True),
        (JobState.QUEUED, JobState.SUCCEEDED, False),
        (JobState.SUCCEEDED, JobState.QUEUED, False),
        (JobState.CANCELLED, JobState.QUEUED, False),
        (JobState.RUNNING, JobState.TIMED_OUT, True),
        (JobState.QUEUED, JobState.DEAD, True),  # undeliverable
        (JobState.SUCCEEDED, JobState.DEAD, False),
    ],
)
def test_transition_table(frm: JobState, to: JobState, ok: bool) -> None:
    assert is_allowed(frm, to) is ok


def test_every_state_has_a_row() -> None:
    assert set(TRANSITIONS) == set(JobState)


@pytest.mark.parametrize(
    ("base", "attempts", "cap", "expected"),
    [(1.0, 1, 300, 1.0), (1.0, 2, 300, 2.0), (1.0, 4, 300, 8.0), (1.0, 20, 300, 300.0), (0.0, 3, 300, 0.0)],
)
def test_backoff_doubles_and_is_capped(base: float, attempts: int, cap: float, expected: float) -> None:
    assert backoff_delay(base, attempts, cap) == expected


def test_medic_priority_maps_to_kombu_order() -> None:
    # kombu's Redis transport serves lower numbers first; medic's 9 is the most urgent
    assert kombu_priority(9) == 0
    assert kombu_priority(0) == 9
    assert kombu_priority(42) == 0
    assert kombu_priority(-1) == 9
