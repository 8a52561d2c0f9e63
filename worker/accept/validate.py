"""Turning what a caller asks for into a job the ledger can take, with no I/O.

Everything is checked here, before anything is written: an unknown type, args that do not fit
the signature or are over the size limit, an undeclared queue, a queue the caller may not use,
a priority, timeout or attempt count out of range. Each raises a PermanentError (a 4xx).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from worker.clock import utcnow
from worker.errors import ForbiddenError, InvalidArgsError, PayloadTooLargeError
from worker.ledger.records import NewJob
from worker.ledger.transitions import new_delivery_id
from worker.runtime.queues import DeclaredQueues, check_queue, declared_queues
from worker.runtime.registry import get_spec
from worker.settings import Settings, get_settings


@dataclass(frozen=True)
class JobRequest:
    """What a caller asks for; None means "the job type's default"."""

    type: str
    args: Mapping[str, Any] = field(default_factory=dict)
    queue: str | None = None
    priority: int = 0
    timeout: float | None = None
    max_attempts: int | None = None
    idempotency_key: str | None = None


def new_job(
    req: JobRequest,
    *,
    tenant: str,
    s: Settings,
    now: dt.datetime,
    declared: DeclaredQueues | None = None,
    allowed_queues: frozenset[str] | None = None,
) -> NewJob:
    """Validate one request. `allowed_queues`: the caller may submit only to these (None: to
    every declared queue).

    Raises:
        UnknownJobTypeError, InvalidArgsError, PayloadTooLargeError, UnknownQueueError, ForbiddenError
    """
    spec = get_spec(req.type)
    queue = check_queue(req.queue or spec.queue_or(s), s, declared)
    if allowed_queues is not None and queue not in allowed_queues:
        raise ForbiddenError(f"this key may not submit to queue {queue!r}", queue=queue)
    args = spec.validate(req.args)
    size = len(json.dumps(args, separators=(",", ":")).encode())
    if size > s.max_payload_bytes:
        raise PayloadTooLargeError(
            f"args are {size} bytes; the limit is {s.max_payload_bytes}", size=size, limit=s.max_payload_bytes
        )
    if not 0 <= req.priority <= 9:
        raise InvalidArgsError("priority must be 0..9")
    timeout = req.timeout if req.timeout is not None else (spec.timeout_s or s.default_timeout_seconds)
    attempts = req.max_attempts if req.max_attempts is not None else (spec.max_attempts or s.default_max_attempts)
    if timeout <= 0:
        raise InvalidArgsError("timeout must be positive")
    if attempts < 1:
        raise InvalidArgsError("max_attempts must be at least 1")
    return NewJob(
        id=uuid.uuid4(),
        type=spec.name,
        queue=queue,
        priority=req.priority,
        tenant=tenant,
        idempotency_key=req.idempotency_key,
        args=args,
        max_attempts=attempts,
        timeout_s=float(timeout),
        backoff_s=spec.backoff_s if spec.backoff_s is not None else s.default_backoff_seconds,
        delivery_id=new_delivery_id(),
        created_at=now,
    )


def new_jobs(
    requests: Sequence[JobRequest], *, tenant: str, allowed_queues: frozenset[str] | None = None
) -> list[NewJob]:
    """Validate every request (all share one clock reading and one read of the declared queues).

    Raises:
        UnknownJobTypeError, InvalidArgsError, PayloadTooLargeError, UnknownQueueError, ForbiddenError
    """
    s = get_settings()
    now = utcnow()
    declared = declared_queues(s)
    return [new_job(r, tenant=tenant, s=s, now=now, declared=declared, allowed_queues=allowed_queues) for r in requests]
