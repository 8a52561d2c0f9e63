"""How one run of a job ended, as the worker saw it: the typed value that crosses from the task
body (or the main process's report of a lost child) to finalize and to the metrics."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class OutcomeKind(StrEnum):
    """The kind of ending; the values are also the reasons written to the job's events."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the job raised, or its result cannot be stored
    TIMEOUT = "timeout"  # soft or hard time limit
    WORKER_LOST = "worker_lost"  # the process running it died


@dataclass(frozen=True)
class Outcome:
    """One run's ending: `value` is the result (succeeded), the error dict (failed) or the detail
    text (timeout); a lost run has none (the process that would know is gone). A failure that is
    not `retryable` would end the same way on every attempt: the job is dead at once."""

    kind: OutcomeKind
    value: Any = None
    retryable: bool = True

    @classmethod
    def succeeded(cls, result: Any) -> Outcome:
        return cls(OutcomeKind.SUCCEEDED, result)

    @classmethod
    def failed(cls, error: dict[str, Any], *, retryable: bool = True) -> Outcome:
        return cls(OutcomeKind.FAILED, error, retryable)

    @classmethod
    def timed_out(cls, detail: str) -> Outcome:
        return cls(OutcomeKind.TIMEOUT, detail)
