"""One error root. Retryable errors are worth trying again; permanent ones are not.

HTTP status codes are chosen in ``api/errors.py`` only.
"""

from __future__ import annotations

from typing import Any


class MedicError(Exception):
    """Root of every error medic raises on purpose."""

    code = "medic_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class RetryableError(MedicError):
    """A dependency is briefly unavailable; the same call may succeed later."""


class PermanentError(MedicError):
    """The request itself is wrong; repeating it will not help."""


class LedgerUnavailableError(RetryableError):
    code = "ledger_unavailable"


class CommitUnconfirmedError(LedgerUnavailableError):
    """A submission whose commit the ledger did not confirm (its reply lost twice, or not in time).
    `details["outcome"]`: "not_written" (nothing was: safe to send again) or "unknown" (look the
    jobs up by `details["job_ids"]` before sending them again without an idempotency key)."""

    code = "commit_unconfirmed"


class UnknownJobTypeError(PermanentError):
    code = "unknown_job_type"


class InvalidArgsError(PermanentError):
    code = "invalid_args"


class PayloadTooLargeError(PermanentError):
    code = "payload_too_large"


class UnknownQueueError(PermanentError):
    """A queue that is not declared, or an internal name (the control queue, a broker key)."""

    code = "unknown_queue"


class JobNotFoundError(PermanentError):
    code = "job_not_found"


class InvalidTransitionError(PermanentError):
    """A state change the state machine does not allow (a programming error or a race lost)."""

    code = "invalid_state"


class IdempotencyConflictError(PermanentError):
    """The idempotency key was used before for a different job."""

    code = "idempotency_conflict"


class ScheduleNotFoundError(PermanentError):
    code = "schedule_not_found"


class ScheduleConflictError(PermanentError):
    """The tenant has a schedule of that name, or the schedule changed while this change was made."""

    code = "schedule_conflict"


class DuplicateJobNameError(PermanentError):
    code = "duplicate_job_name"


class QueueFullError(RetryableError):
    """A queue is shedding load or would pass its watermark; `retry_after` says when to come back."""

    code = "queue_full"


class QueuePausedError(RetryableError):
    """The queue is paused with admission "refuse"; `retry_after` says when to ask again."""

    code = "queue_paused"


class TenantQuotaError(RetryableError):
    code = "tenant_quota"


class OverloadedError(RetryableError):
    """This process has more work in hand than it accepts (e.g. the group-commit queue is full)."""

    code = "overloaded"


class UnauthorizedError(PermanentError):
    code = "unauthorized"


class ForbiddenError(PermanentError):
    code = "forbidden"


class RequestTooLargeError(PermanentError):
    code = "request_too_large"


class InvalidWorkflowError(InvalidArgsError):
    """A workflow that is not a DAG of known, uniquely named steps (a 422, nothing written)."""

    code = "invalid_workflow"


class WorkflowNotFoundError(PermanentError):
    code = "workflow_not_found"
