"""Writing accepted jobs: ONE transaction for the rows of one caller or of a group of callers,
then ONE pipeline to publish what is new (the outbox: the row is committed before its message).

Idempotency is decided here: a row whose (tenant, key) exists returns the existing job
(created=False), or an IdempotencyConflictError when the key was used for a different job.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.engine import Connection

from worker.accept.admission import Reservation
from worker.broker.publish import publish
from worker.errors import IdempotencyConflictError, MedicError
from worker.ledger import db, queries, transitions
from worker.ledger.records import Job, NewJob


@dataclass(frozen=True)
class Accepted:
    """What accepting one job came to."""

    job: Job
    created: bool  # False: an earlier job with the same idempotency key was returned
    published: bool = True  # False: the broker refused; the reconcile loop will publish it


Committed = Accepted | MedicError  # one row of a group: its job, or its own error


def _create_once(conn: Connection, new: NewJob, *, actor: str) -> Accepted:
    """A job with an idempotency key: the first request creates it, later ones get it back."""
    inserted = transitions.create_job_once(conn, new, actor=actor, now=new.created_at)
    if inserted is not None:
        return Accepted(inserted, True)
    assert new.idempotency_key is not None
    existing = queries.find_by_idempotency_key(conn, new.tenant, new.idempotency_key)
    if existing is None:  # deleted between the two statements (prune): a fresh insert is right
        return _create_once(conn, new, actor=actor)
    if existing.type != new.type or existing.args != new.args:
        raise IdempotencyConflictError("this Idempotency-Key was used for a different job", job_id=str(existing.id))
    return Accepted(existing, False)


def _create_plain(conn: Connection, news: Sequence[NewJob], actors: Sequence[str]) -> dict[uuid.UUID, Job]:
    """Jobs without an idempotency key, one statement per actor (the event names it)."""
    by_actor: dict[str, list[NewJob]] = {}
    for new, actor in zip(news, actors, strict=True):
        by_actor.setdefault(actor, []).append(new)
    created: dict[uuid.UUID, Job] = {}
    for actor, group in by_actor.items():
        for job in transitions.create_jobs(conn, group, actor=actor, now=group[0].created_at):
            created[job.id] = job
    return created


def commit(news: Sequence[NewJob], actors: Sequence[str], *, separate: bool = False) -> list[Committed]:
    """Commit `news` (of one caller or of many, each with its actor) in ONE transaction.

    Jobs without an idempotency key go in one statement per actor; when there are only such jobs
    and one actor, that statement is the whole transaction (db.write: one round trip, safe to
    re-run). Two jobs with the same key: the first creates, the second gets the first back. With
    `separate` (jobs of different callers: group commit) a job whose key was used for a different
    job gets its own IdempotencyConflictError and the others still commit; without it the
    conflict raises and nothing is written (one caller's batch is all or nothing). Errors of the
    transaction itself (ledger down, a value the ledger refuses) raise for all: the caller decides.
    """
    if all(n.idempotency_key is None for n in news) and len(set(actors)) <= 1:
        created = db.write(lambda conn: _create_plain(conn, news, actors))
        return [Accepted(created[n.id], True) for n in news]
    results: list[Committed] = []
    with db.begin() as conn:
        plain = [(n, a) for n, a in zip(news, actors, strict=True) if n.idempotency_key is None]
        created = _create_plain(conn, [n for n, _ in plain], [a for _, a in plain])
        for new, actor in zip(news, actors, strict=True):
            if new.idempotency_key is None:
                results.append(Accepted(created[new.id], True))
                continue
            try:
                results.append(_create_once(conn, new, actor=actor))
            except IdempotencyConflictError as exc:  # raised after a read: the transaction is intact
                if not separate:
                    raise
                results.append(exc)
    return results


def publish_new(done: Sequence[Committed], reservations: Sequence[Reservation] = ()) -> list[Committed]:
    """Publish every job `done` created, all in one pipeline; mark what the broker refused.

    The `reservations` these jobs were admitted with are removed in that pipeline, after the
    messages: no round trip of their own. One the publish did not remove stays with its holder,
    who releases it (or it expires).
    """
    new_jobs = [a.job for a in done if isinstance(a, Accepted) and a.created]
    held = [(r, entry) for r in reservations if (entry := r.entry()) is not None] if new_jobs else []
    refused = set(publish(new_jobs, arrivals=True, then_remove=[entry for _, entry in held]))
    if not refused:
        for reservation, _ in held:
            reservation.removed()
    return [Accepted(a.job, a.created, a.job.id not in refused) if isinstance(a, Accepted) else a for a in done]
