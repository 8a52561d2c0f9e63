"""Writing accepted jobs: ONE transaction for the rows of one caller or of a group of callers,
then ONE pipeline to publish what is new (the outbox: the row is committed before its message).

Idempotency is decided here: a row whose (tenant, key) exists returns the existing job
(created=False), or an IdempotencyConflictError when the key was used for a different job. Rows
with a key are inserted in (tenant, key) order, so two transactions holding the same keys wait
for each other in one order and never deadlock.

A COMMIT whose answer is lost (the connection dies after sending it) may or may not have
committed. Every insert here is idempotent by the job's id (made on the client) and waits for an
in-flight insert of the same id, so `settle` runs the same writes once more on another
connection: rows the lost COMMIT wrote are read back (and answered and published as created),
rows it did not are written now. Only when that fails too is the outcome unknown
(CommitUnconfirmedError naming the job ids).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from worker.accept.admission import Reservation
from worker.broker.publish import dispatch_queues, publish
from worker.errors import CommitUnconfirmedError, IdempotencyConflictError, LedgerUnavailableError, MedicError
from worker.ledger import db, queries, transitions
from worker.ledger.dispatch import slots_freed
from worker.ledger.records import Job, NewJob
from worker.ledger.states import JobState

log = logging.getLogger(__name__)


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
    if existing.id == new.id:  # this very job, committed by a COMMIT whose answer was lost (settle)
        return Accepted(existing, True)
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


class _UnconfirmedError(Exception):
    """The COMMIT (or the one statement of an autocommit write) got no answer: outcome unknown."""


def commit(news: Sequence[NewJob], actors: Sequence[str], *, separate: bool = False) -> list[Committed]:
    """Commit `news` (of one caller or of many, each with its actor) in ONE transaction.

    Jobs without an idempotency key go in one statement per actor; when there are only such jobs
    and one actor, that statement is the whole transaction (db.write: one round trip, safe to
    re-run). Two jobs with the same key: the first creates, the second gets the first back. With
    `separate` (jobs of different callers: group commit) a job whose key was used for a different
    job gets its own IdempotencyConflictError and the others still commit; without it the
    conflict raises and nothing is written (one caller's batch is all or nothing). Errors of the
    transaction itself (ledger down, a value the ledger refuses) raise for all: the caller decides.
    A COMMIT whose answer is lost is settled (`settle`).

    Raises:
        CommitUnconfirmedError: the answer was lost and settling failed too (outcome unknown).
    """
    try:
        return _commit_once(news, actors, separate=separate)
    except _UnconfirmedError as exc:
        log.warning("the ledger did not answer a COMMIT of %d jobs (%s); settling it", len(news), exc.__cause__)
        return settle(news, actors, separate=separate)


def settle(news: Sequence[NewJob], actors: Sequence[str], *, separate: bool = False) -> list[Committed]:
    """Run the writes of `news` once more, on another connection: what an earlier, unanswered
    try committed is read back (created, as it was), what it did not is written now. An insert
    of an id another transaction is still inserting waits for it (bounded by the lock timeout).

    Raises:
        CommitUnconfirmedError (outcome "unknown"): this try got no answer or no ledger either.
        IdempotencyConflictError, a ledger refusal: as `commit`.
    """
    try:
        return _commit_once(news, actors, separate=separate)
    except (_UnconfirmedError, LedgerUnavailableError) as exc:
        cause = exc.__cause__ if isinstance(exc, _UnconfirmedError) else exc
        raise CommitUnconfirmedError(
            f"the ledger did not confirm the commit ({type(cause).__name__}); the jobs may be committed: "
            "look them up by id before sending them again",
            outcome="unknown",
            job_ids=[str(n.id) for n in news],
        ) from cause


def _commit_once(news: Sequence[NewJob], actors: Sequence[str], *, separate: bool) -> list[Committed]:
    """One try. Raises _UnconfirmedError when the COMMIT's answer is lost; any other error means
    this try wrote nothing."""
    if all(n.idempotency_key is None for n in news) and len(set(actors)) <= 1:
        try:
            created = db.write(lambda conn: _create_plain(conn, news, actors))
        except LedgerUnavailableError as exc:  # db.write re-ran it once already
            if db.lost_connection(exc):
                raise _UnconfirmedError() from exc
            raise
        return [Accepted(created[n.id], True) for n in news]
    written = False
    try:
        with db.begin() as conn:
            results = _write(conn, news, actors, separate=separate)
            written = True  # what fails from here on is the COMMIT
    except (LedgerUnavailableError, sa_exc.SQLAlchemyError) as exc:
        if written:
            raise _UnconfirmedError() from exc
        raise
    return results


def _write(conn: Connection, news: Sequence[NewJob], actors: Sequence[str], *, separate: bool) -> list[Committed]:
    """The statements of one transaction: plain jobs first, then keyed ones in (tenant, key)
    order (a deterministic lock order), the results in `news`' order."""
    plain = [(n, a) for n, a in zip(news, actors, strict=True) if n.idempotency_key is None]
    created = _create_plain(conn, [n for n, _ in plain], [a for _, a in plain])
    results: list[Committed | None] = [
        Accepted(created[n.id], True) if n.idempotency_key is None else None for n in news
    ]
    keyed = sorted((i for i, n in enumerate(news) if n.idempotency_key is not None), key=lambda i: _lock_order(news[i]))
    for i in keyed:
        try:
            results[i] = _create_once(conn, news[i], actor=actors[i])
        except IdempotencyConflictError as exc:  # raised after a read: the transaction is intact
            if not separate:
                raise
            results[i] = exc
    return [r for r in results if r is not None]


def _lock_order(new: NewJob) -> tuple[str, str]:
    return new.tenant, new.idempotency_key or ""


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
    # jobs the dispatcher starts were written `held`: the ones that may start now go at once
    dispatch_queues(slots_freed(j for j in new_jobs if j.state == JobState.HELD.value))
    return [Accepted(a.job, a.created, a.job.id not in refused) if isinstance(a, Accepted) else a for a in done]
