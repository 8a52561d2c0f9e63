"""Submitting jobs: validate, commit the row, then publish (the outbox).

Everything is validated before anything is written: an unknown type, args that do not fit the
signature, args over the size limit, an undeclared queue, or a queue the caller's key may not use
raise and leave the ledger untouched.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Connection

from worker.broker.publish import publish
from worker.clock import utcnow
from worker.errors import ForbiddenError, IdempotencyConflictError, InvalidArgsError, MedicError, PayloadTooLargeError
from worker.ledger import db, queries, transitions
from worker.ledger.models import JobRow
from worker.ledger.records import NewJob
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


def _record(row: Mapping[str, Any]) -> NewJob:
    return NewJob(**{f.name: row[f.name] for f in dataclasses.fields(NewJob)})


def _enqueue_once(conn: Connection, row: dict[str, Any], *, actor: str, now: Any) -> Enqueued:
    """A job with an idempotency key: the first request creates it, later ones get it back."""
    inserted = transitions.create_job_once(conn, _record(row), actor=actor, now=now)
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


def _create_plain(conn: Connection, rows: Sequence[dict[str, Any]], actors: Sequence[str]) -> dict[uuid.UUID, JobRow]:
    """Rows without an idempotency key, one statement per actor (the event names it)."""
    by_actor: dict[str, list[dict[str, Any]]] = {}
    for row, actor in zip(rows, actors, strict=True):
        by_actor.setdefault(actor, []).append(row)
    created: dict[uuid.UUID, JobRow] = {}
    for actor, group in by_actor.items():
        for job in transitions.create_jobs(conn, [_record(r) for r in group], actor=actor, now=group[0]["created_at"]):
            created[job.id] = job
    return created


Committed = Enqueued | MedicError  # what one row of a group came to: its job, or its own error


def commit_rows(rows: Sequence[dict[str, Any]], actors: Sequence[str], *, separate: bool = False) -> list[Committed]:
    """Commit prepared rows (of one caller or of many, each with its actor) in ONE transaction.

    Rows without an idempotency key go in one statement per actor; when there are only such rows
    and one actor that statement is the whole transaction (db.write: one round trip, safe to
    re-run). Two rows with the same key: the first creates, the second gets the first's job back
    (created=False). With `separate` (rows of different callers: group commit) a row whose key
    was used for a different job gets its own IdempotencyConflictError and the others still
    commit; without it the conflict raises and nothing is written (one caller's batch is all or
    nothing). Errors of the transaction itself (ledger down, a value the ledger refuses) raise for
    all: the caller decides.
    """
    if all(r["idempotency_key"] is None for r in rows) and len(set(actors)) <= 1:
        created = db.write(lambda conn: _create_plain(conn, rows, actors))
        return [Enqueued(created[r["id"]], True) for r in rows]
    results: list[Committed] = []
    with db.begin() as conn:
        plain = [(r, a) for r, a in zip(rows, actors, strict=True) if r["idempotency_key"] is None]
        created = _create_plain(conn, [r for r, _ in plain], [a for _, a in plain])
        for row, actor in zip(rows, actors, strict=True):
            if row["idempotency_key"] is None:
                results.append(Enqueued(created[row["id"]], True))
                continue
            try:
                results.append(_enqueue_once(conn, row, actor=actor, now=row["created_at"]))
            except IdempotencyConflictError as exc:  # raised after a read: the transaction is intact
                if not separate:
                    raise
                results.append(exc)
    return results


def publish_new(done: Sequence[Committed]) -> list[Committed]:
    """Publish every job `done` created, all in one pipeline; mark what the broker refused."""
    new_jobs = [e.job for e in done if isinstance(e, Enqueued) and e.created]
    refused = set(publish(new_jobs, arrivals=True))
    return [Enqueued(e.job, e.created, e.job.id not in refused) if isinstance(e, Enqueued) else e for e in done]


def enqueue_rows(rows: Sequence[dict[str, Any]], *, actor: str) -> list[Enqueued]:
    """Commit prepared rows in one transaction, then publish what is new in one pass.

    Raises:
        IdempotencyConflictError: a key was used for a different job (then nothing is written).
    """
    if not rows:
        return []
    done = commit_rows(rows, [actor] * len(rows))
    return [e for e in publish_new(done) if isinstance(e, Enqueued)]


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
