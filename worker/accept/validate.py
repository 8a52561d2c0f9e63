"""Turning what a caller asks for into a job the ledger can take, with no I/O.

Everything is checked here, before anything is written: an unknown type, args that do not fit
the signature or are over the size limit, an undeclared queue, a queue the caller may not use,
a priority out of range, a timeout or attempt count out of range or over the settings' caps
(`MEDIC_MAX_JOB_TIMEOUT_SECONDS`, `MEDIC_MAX_JOB_ATTEMPTS`). Each raises a PermanentError (a 4xx).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from worker.clock import seconds, utcnow
from worker.errors import ForbiddenError, InvalidArgsError, PayloadTooLargeError
from worker.ledger.records import Flow, NewJob
from worker.ledger.transitions import new_delivery_id
from worker.runtime.queues import DeclaredQueues, check_queue, declared_queues
from worker.runtime.registry import JobSpec, get_spec
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
    _check_asked(req, tenant, s)
    timeout = req.timeout if req.timeout is not None else (spec.timeout_s or s.default_timeout_seconds)
    attempts = req.max_attempts if req.max_attempts is not None else (spec.max_attempts or s.default_max_attempts)
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
        flow=flow_of(spec, queue, tenant, args, req.priority, now, s),
    )


def flow_of(
    spec: JobSpec, queue: str, tenant: str, args: Mapping[str, Any], priority: int, now: dt.datetime, s: Settings
) -> Flow | None:
    """How the dispatcher starts the job (None: published at once, today's fast path): its type
    declared a concurrency key or a rate limit, or its queue is dispatched (MEDIC_DISPATCH_QUEUES).
    Its rank is its creation less `priority` aging steps: priorities that age.

    Raises:
        InvalidArgsError: a key rendered from the args is too long.
    """
    if spec.flow is None and not s.dispatched(queue):
        return None
    rank = now - seconds(priority * s.priority_aging_seconds)
    if spec.flow is None:
        return Flow(rank=rank)
    try:
        flow_key, rate_key = spec.flow.keys(spec.name, tenant, args)
    except ValueError as exc:
        raise InvalidArgsError(str(exc)) from None
    return Flow(
        rank=rank,
        key=flow_key,
        limit=spec.flow.concurrency_limit,
        rate_key=rate_key,
        rate_interval_s=spec.flow.rate_interval_s,
    )


def _check_asked(req: JobRequest, tenant: str, s: Settings) -> None:
    """What a caller may ask for: a timeout (a slot held that long) and attempts (that many runs)
    within its tenant's caps (MEDIC_TENANT_LIMITS), else the settings' global ones. A job type's
    own defaults are the code's, not the caller's, and are not capped.

    Raises:
        InvalidArgsError
    """
    if req.timeout is not None:
        if not req.timeout > 0:
            raise InvalidArgsError("timeout must be positive")
        longest, source = s.tenant_max_timeout(tenant)
        if req.timeout > longest:
            raise InvalidArgsError(
                f"timeout {req.timeout:g} s is over the longest a job of tenant {tenant!r} may ask for, "
                f"{longest:g} s ({source})",
                limit=longest,
            )
    if req.max_attempts is not None:
        if req.max_attempts < 1:
            raise InvalidArgsError("max_attempts must be at least 1")
        most, source = s.tenant_max_attempts(tenant)
        if req.max_attempts > most:
            raise InvalidArgsError(
                f"max_attempts {req.max_attempts} is over the most a job of tenant {tenant!r} may ask for, "
                f"{most} ({source})",
                limit=most,
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
