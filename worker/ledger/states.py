"""The job state machine, written down once."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    WAITING = "waiting"  # a workflow step whose predecessors have not all succeeded
    HELD = "held"  # accepted, kept in the ledger until the dispatcher starts it (worker/ledger/dispatch.py)
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    TIMED_OUT = "timed_out"
    DEAD = "dead"
    CANCELLED = "cancelled"


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED})

# from-state -> the states it may move to. `timed_out` is a passing state: the job moves on to
# `queued` or `dead` in the same transaction, and the reason stays in its events.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    # released when the last step it waits for succeeds; cancelled when one fails (fail_fast) or by a cancel
    JobState.WAITING: frozenset({JobState.QUEUED, JobState.HELD, JobState.CANCELLED}),
    # dispatched (a slot of its key, a token of its rate, its tenant's turn, its queue not paused)
    JobState.HELD: frozenset({JobState.QUEUED, JobState.CANCELLED, JobState.DEAD}),
    # queued -> dead: given up, its message could not be delivered however often it was re-sent;
    # queued -> held: its queue was paused, or its rate had no token, when its delivery came
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.QUEUED, JobState.HELD, JobState.DEAD}),
    JobState.RUNNING: frozenset(
        {
            JobState.RUNNING,  # a cancel request or a progress report: the state stays, the event records it
            JobState.SUCCEEDED,
            JobState.QUEUED,  # failed with attempts left, or worker lost
            JobState.HELD,  # the same, for a job the dispatcher starts
            JobState.DEAD,
            JobState.TIMED_OUT,
            JobState.CANCELLED,
        }
    ),
    JobState.TIMED_OUT: frozenset({JobState.QUEUED, JobState.HELD, JobState.DEAD}),
    JobState.DEAD: frozenset({JobState.QUEUED, JobState.HELD}),  # manual retry
    JobState.SUCCEEDED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


def is_allowed(frm: JobState, to: JobState) -> bool:
    return to in TRANSITIONS[frm]
