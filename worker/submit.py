"""Submitting jobs: validate, commit the row, then publish (the outbox).

Everything is validated before anything is written: an unknown type, args that do not fit the
signature, args over the size limit, an undeclared queue, or a queue the caller's key may not use
raise and leave the ledger untouched.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Connection

from worker.broker.counters import record_arrivals
from worker.broker.publish import publish
from worker.clock import utcnow
from worker.errors import ForbiddenError, IdempotencyConflictError, InvalidArgsError, PayloadTooLargeError
from worker.ledger import db, queries, transitions
from worker.ledger.models import JobRow
from worker.runtime.queues import DeclaredQueues, check_queue, declared_queues
from worker.runtime.registry import get_spec
from worker.settings import Settings, get_settings

DEFAULT_TENANT = "default"


@dataclass
class JobRequest:
    """What a caller asks for; None means "the job type's default"."""

    type: str
    args: Mapping[str, Any] = field(default_factory=dict)
    queue: str | None = None
    priority: int = 0
    timeout: float | None = None
    max_attempts: int | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Enqueued:
    job: JobRow
    created: bool  # False: an earlier job with the same idempotency key was returned
    published: bool = True  # False: the broker refused; the reconcile loop will publish it


def build_row(
    req: JobRequest,
    *,
    tenant: str,
    s: Settings,
    now: Any,
    declared: DeclaredQueues | None = None,
    allowed_queues: frozenset[str] | None = None,
) -> dict[str, Any]:
    """Validate a request and turn it into a ledger row (no I/O). `allowed_queues`: the caller's
    key is limited to these (None: every declared queue).

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
    return {
        "id": uuid.uuid4(),
        "type": spec.name,
        "queue": queue,
        "priority": req.priority,
        "tenant": tenant,
        "idempotency_key": req.idempotency_key,
        "args": args,
        "max_attempts": attempts,
        "timeout_s": float(timeout),
        "backoff_s": spec.backoff_s if spec.backoff_s is not None else s.default_backoff_seconds,
        "delivery_id": transitions.new_delivery_id(),
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
        "published_at": now,
    }


def _enqueue_once(conn: Connection, row: dict[str, Any], *, actor: str, now: Any) -> Enqueued:
    """A job with an idempotency key: the first request creates it, later ones get it back."""
    inserted = transitions.create_job_once(conn, row, actor=actor, now=now)
    if inserted is not None:
        return Enqueued(inserted, True)
    existing = queries.find_by_idempotency_key(conn, row["tenant"], row["idempotency_key"])
    if existing is None:  # deleted between the two statements (prune): a fresh insert is right
        return _enqueue_once(conn, row, actor=actor, now=now)
    if existing.type != row["type"] or existing.args != row["args"]:
        raise IdempotencyConflictError("this Idempotency-Key was used for a different job", job_id=str(existing.id))
    return Enqueued(existing, False)


def prepare(
    requests: Sequence[JobRequest], *, tenant: str, allowed_queues: frozenset[str] | None = None
) -> list[dict[str, Any]]:
    """Validate every request and build its row; nothing is written.

    Raises:
        UnknownJobTypeError, InvalidArgsError, PayloadTooLargeError, UnknownQueueError, ForbiddenError
    """
    s = get_settings()
    now = utcnow()
    declared = declared_queues(s)
    return [
        build_row(r, tenant=tenant, s=s, now=now, declared=declared, allowed_queues=allowed_queues) for r in requests
    ]


def _commit_rows(rows: Sequence[dict[str, Any]], *, actor: str, now: Any) -> list[Enqueued]:
    """Commit prepared rows; rows without an idempotency key in one statement (db.write: one
    round trip on PostgreSQL, safe to re-run), the rest in one transaction with them."""
    if all(r["idempotency_key"] is None for r in rows):
        created = db.write(lambda conn: transitions.create_jobs(conn, rows, actor=actor, now=now))
        return [Enqueued(row, True) for row in created]
    results: list[Enqueued | None] = [None] * len(rows)
    with db.begin() as conn:
        plain = [i for i, r in enumerate(rows) if r["idempotency_key"] is None]
        created = transitions.create_jobs(conn, [rows[i] for i in plain], actor=actor, now=now)
        for i, row in zip(plain, created, strict=True):
            results[i] = Enqueued(row, True)
        for i, r in enumerate(rows):
            if r["idempotency_key"] is not None:
                results[i] = _enqueue_once(conn, r, actor=actor, now=now)
    return [e for e in results if e is not None]


def enqueue_rows(rows: Sequence[dict[str, Any]], *, actor: str) -> list[Enqueued]:
    """Commit prepared rows in one transaction, then publish what is new in one pass."""
    if not rows:
        return []
    done = _commit_rows(rows, actor=actor, now=rows[0]["created_at"])
    new_jobs = [e.job for e in done if e.created]
    refused = set(publish(new_jobs))
    record_arrivals(Counter(job.queue for job in new_jobs))
    return [Enqueued(e.job, e.created, e.job.id not in refused) for e in done]


def enqueue_many(requests: Sequence[JobRequest], *, tenant: str = DEFAULT_TENANT, actor: str = "api") -> list[Enqueued]:
    """Enqueue all of `requests` in one transaction, then publish what is new in one go."""
    return enqueue_rows(prepare(requests, tenant=tenant), actor=actor)


def enqueue(
    type: str,
    args: Mapping[str, Any] | None = None,
    *,
    tenant: str = DEFAULT_TENANT,
    queue: str | None = None,
    priority: int = 0,
    timeout: float | None = None,
    max_attempts: int | None = None,
    idempotency_key: str | None = None,
    actor: str = "library",
) -> Enqueued:
    """Enqueue one job. The row is committed before the message is sent."""
    req = JobRequest(type, args or {}, queue, priority, timeout, max_attempts, idempotency_key)
    return enqueue_many([req], tenant=tenant, actor=actor)[0]
