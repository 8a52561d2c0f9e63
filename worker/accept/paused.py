"""Pausing a queue: the operator's pause and resume (API and CLI alike), and the accept path's
check of a queue paused with admission "refuse".

A pause is a row of `queue_controls` (worker/ledger/dispatch.py `set_paused`), so it survives
every restart: the dispatcher starts nothing of a paused queue, and the claim is fenced on it (a
message already in the broker when the pause committed parks its job `held`). Admission goes on
("accept", the default: jobs are written and wait) unless the pause says "refuse": `accept()`
then answers QueuePausedError (429 queue_paused) and writes nothing. A resume dispatches the
queue's held jobs at once, in bounded batches; the dispatch_held loop does the rest.

Each change is audited in `control_decisions` (kind "pause" or "resume") in the transaction that
makes it, and logged.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

from worker.broker.publish import dispatch_queues
from worker.clock import utcnow
from worker.errors import LedgerUnavailableError, QueuePausedError
from worker.ledger import db, dispatch
from worker.ledger.dispatch import QueueControl
from worker.ledger.models import control_decisions
from worker.ledger.records import NewJob
from worker.runtime.queues import check_queue
from worker.settings import get_settings

log = logging.getLogger(__name__)

PAUSE = "pause"
RESUME = "resume"
ACCEPT = "accept"
REFUSE = "refuse"
CACHE_S = 1.0  # how stale this process's view of the paused queues may be at the accept path
RESUME_ROUNDS = 20  # dispatches a resume runs itself (each up to MEDIC_CONTROL_BATCH_SIZE jobs)
RETRY_AFTER_S = 30  # a pause has no known end: the client comes back in this long


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    """A queue's control state after a pause or resume; `changed`: this call changed it;
    `dispatched`: held jobs a resume sent at once."""

    control: QueueControl
    changed: bool
    dispatched: int = 0


def admission_of(control: QueueControl) -> str | None:
    """The admission while paused ("accept" or "refuse"); None when not paused."""
    if not control.paused:
        return None
    return REFUSE if control.refuse_while_paused else ACCEPT


def public(control: QueueControl) -> dict[str, Any]:
    """The control state as the API and the CLI show it."""
    return {
        "queue": control.queue,
        "paused": control.paused,
        "admission": admission_of(control),
        "paused_at": control.paused_at,
        "paused_by": control.paused_by,
    }


def _set(queue: str, *, paused: bool, refuse: bool, actor: str) -> tuple[QueueControl, bool]:
    """Write the state if it differs, with its audit row, in one transaction."""
    now = utcnow()
    with db.begin() as conn:
        before = dispatch.control_of(conn, queue)
        if before.paused == paused and (not paused or before.refuse_while_paused == refuse):
            return before, False
        after = dispatch.set_paused(conn, queue, paused=paused, actor=actor, now=now, refuse=refuse)
        kind = PAUSE if paused else RESUME
        summary = f"{kind}d by {actor}" + (f", admission {admission_of(after)}" if paused else "")
        inputs = {"actor": actor, "was_paused": before.paused, "admission": admission_of(after)}
        conn.execute(control_decisions.insert().values(at=now, kind=kind, queue=queue, summary=summary, inputs=inputs))
    forget()
    return after, True


def pause_queue(queue: str, *, actor: str, refuse: bool = False) -> Change:
    """Pause `queue` (idempotent: pausing it again with the same admission writes nothing).

    Raises:
        UnknownQueueError: not a declared queue (nothing written).
    """
    check_queue(queue, get_settings())
    control, changed = _set(queue, paused=True, refuse=refuse, actor=actor)
    log.info("queue %s paused by %s (admission %s)%s", queue, actor, admission_of(control),
             "" if changed else ", already so")  # fmt: skip
    return Change(control, changed)


def resume_queue(queue: str, *, actor: str) -> Change:
    """Resume `queue` (idempotent), then dispatch its held jobs now: up to RESUME_ROUNDS
    dispatches, until one starts nothing (a dispatched queue's window is full, or none are left).

    Raises:
        UnknownQueueError: not a declared queue (nothing written).
    """
    check_queue(queue, get_settings())
    control, changed = _set(queue, paused=False, refuse=False, actor=actor)
    dispatched = 0
    for _ in range(RESUME_ROUNDS):
        started = dispatch_queues({queue: set()})
        dispatched += len(started)
        if not started:
            break
    log.info("queue %s resumed by %s%s; %d held jobs dispatched at once", queue, actor,
             "" if changed else " (was not paused)", dispatched)  # fmt: skip
    return Change(control, changed, dispatched)


def controls() -> dict[str, QueueControl]:
    """Every paused queue's control state, from the ledger."""
    with db.connect() as conn:
        return dispatch.paused_queues(conn)


# (paused queues, valid until): one ledger read per process per CACHE_S, not one per job
_cache: tuple[dict[str, QueueControl], float] | None = None


def forget() -> None:
    """Drop this process's cached view (a pause or resume made here is seen at once)."""
    global _cache
    _cache = None


def _paused() -> dict[str, QueueControl]:
    global _cache
    if _cache is not None and _cache[1] > time.monotonic():
        return _cache[0]
    try:
        found = controls()
    except LedgerUnavailableError:
        # the commit that follows meets the same outage and answers for it (503, its outcome)
        found = _cache[0] if _cache is not None else {}
    _cache = (found, time.monotonic() + CACHE_S)
    return found


def check_not_refused(news: Sequence[NewJob]) -> None:
    """Refuse `news` if one of their queues is paused with admission "refuse" (a view at most
    CACHE_S old).

    Raises:
        QueuePausedError: the queue is paused and refuses new jobs (nothing written; retry later).
    """
    paused = _paused()
    if not paused:
        return
    for queue in sorted({new.queue for new in news}):
        control = paused.get(queue)
        if control is not None and control.refuse_while_paused:
            raise QueuePausedError(
                f"queue {queue!r} is paused and refuses new jobs (paused by {control.paused_by})",
                queue=queue,
                paused_at=control.paused_at.isoformat() if control.paused_at else None,
                retry_after=min(RETRY_AFTER_S, get_settings().retry_after_max_seconds),
            )
