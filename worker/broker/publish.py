"""Publishing deliveries to the broker: the second half of the outbox.

The row is committed first (with `published_at` set to the intended publish time), then the
message is sent. A refused publish clears `published_at` so the reconcile loop re-sends it; a
crash between commit and send leaves a queued row whose message never arrived, which the
reconcile loop's lost-message rule finds. Either way the job is never lost, and since every
message carries the job's current delivery_id, a duplicate publish is harmless.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import amqp.exceptions
import redis.exceptions
from kombu.exceptions import KombuError
from redis.client import Pipeline
from sqlalchemy.engine import Connection

from worker.broker import rabbitmq
from worker.broker.celery_app import app
from worker.broker.counters import add_arrivals, add_held
from worker.broker.messages import delivery, redis_message
from worker.broker.redis_client import get_redis
from worker.clock import utcnow
from worker.errors import LedgerUnavailableError
from worker.ledger import db, dispatch, transitions
from worker.ledger.records import Job
from worker.ledger.states import JobState
from worker.settings import get_settings

log = logging.getLogger(__name__)

PUBLISH_BATCH = 1000  # messages per Redis pipeline
# Every way a send can fail once the row is committed.
BROKER_ERRORS: tuple[type[Exception], ...] = (
    KombuError,
    redis.exceptions.RedisError,
    amqp.exceptions.AMQPError,
    rabbitmq.PublishRefusedError,
    OSError,
)


def publish(
    rows: Sequence[Any],
    *,
    arrivals: bool = False,
    dispatched: bool = False,
    then_remove: Sequence[tuple[str, str]] = (),
) -> list[uuid.UUID]:
    """Send a delivery for each row, one Redis pipeline per PUBLISH_BATCH (on RabbitMQ: one
    confirmed batch, then the counters' pipeline); returns the job ids refused. `arrivals`: the
    rows are new work, counted in the queues' arrival counters in the same round trip (best
    effort: they go, or are lost, with the messages). `then_remove`:
    (sorted set, member) pairs removed in the last round trip, after every message (the
    admission reservations these jobs held: the queue's length counts them from then on). A
    `held` row is counted as an arrival (and in its queue's held counter, which admission
    reads) and not sent: the dispatcher sends it when it may start. `dispatched`: the rows are
    held jobs the dispatcher just started, taken off their queues' held counters in the same round
    trip (the broker's length counts them from then on).

    The messages are built in worker/broker/messages.py, as Celery would send them. A broker
    error refuses the whole call: every row is marked unpublished and reconcile re-sends it. A
    message that did land before the error is then stale (new delivery_id) and dropped at the
    claim.
    """
    if not rows:
        return []
    try:
        client = get_redis()
        on_rabbitmq = get_settings().on_rabbitmq
        for start in range(0, len(rows), PUBLISH_BATCH):
            chunk = rows[start : start + PUBLISH_BATCH]
            sending = [row for row in chunk if row.state != JobState.HELD]  # a held job is the dispatcher's to send
            with client.pipeline(transaction=False) as pipe:
                if on_rabbitmq:  # confirmed before the counters move
                    rabbitmq.send([delivery(row) for row in sending])
                else:
                    for row in sending:
                        pipe.lpush(*redis_message(delivery(row)))
                _count(pipe, chunk, arrivals=arrivals, dispatched=dispatched)
                if start + PUBLISH_BATCH >= len(rows):
                    for key, member in then_remove:
                        pipe.zrem(key, member)
                pipe.execute()
        return []
    except BROKER_ERRORS as exc:
        log.warning("broker refused %d deliveries: %s", len(rows), exc)
    try:
        with db.begin() as conn:
            transitions.mark_unpublished(conn, [(r.id, r.delivery_id) for r in rows])
    except LedgerUnavailableError:
        log.warning("could not mark %d jobs unpublished; reconcile will find them as lost", len(rows))
    return [r.id for r in rows]


def _count(pipe: Pipeline[str], rows: Sequence[Any], *, arrivals: bool, dispatched: bool) -> None:
    """The queues' counters of a publish, in its pipeline: new work counted as arrivals (and the
    held ones in their queue's held counter); held jobs just dispatched taken off it."""
    if arrivals:
        add_arrivals(pipe, Counter(row.queue for row in rows))
        add_held(pipe, Counter(row.queue for row in rows if row.state == JobState.HELD))
    if dispatched:
        add_held(pipe, {queue: -n for queue, n in Counter(row.queue for row in rows).items()})


def commit_then_publish(
    write: Callable[[Connection], Iterable[Job | None]],
    *,
    before_publish: Callable[[], object] | None = None,
    follow: bool = True,
) -> list[Job | None]:
    """The outbox in one call: run `write` (transitions) in one transaction, commit, then send a
    delivery for every job it left `queued`, and (`follow`) dispatch what the others freed.
    Returns what `write` returned (None: a race lost). `before_publish` runs between the commit
    and the publish (recover_stuck revokes there). A worker passes `follow=False` and leaves
    the dispatch to its wakeup thread (worker/broker/wakeups.py)."""
    with db.begin() as conn:
        after = list(write(conn))
    if before_publish is not None:
        before_publish()
    if follow:
        publish_and_follow(after)
    else:
        publish([row for row in after if row is not None and row.state == JobState.QUEUED])
    return after


def publish_and_follow(rows: Iterable[Job | None]) -> list[Job]:
    """Send a delivery for every row left `queued`, then dispatch what the other rows freed (a
    job the dispatcher starts that ended or was held again: its key's slot, its tenant's share);
    returns what the dispatch started."""
    rows = list(rows)
    publish([row for row in rows if row is not None and row.state == JobState.QUEUED])
    return dispatch_queues(dispatch.slots_freed(rows))


DISPATCHER = "dispatcher"


def dispatch_queues(todo: Mapping[str, dispatch.Wake | Collection[str]], *, budget: int | None = None) -> list[Job]:
    """One dispatch transaction per queue, each then published: what its Wake names, or (a
    collection of keys) every line with those keys' first. A queue the ledger cannot dispatch
    now is left to the dispatch_held loop."""
    started: list[Job] = []
    for queue, what in sorted(todo.items()):
        wake = what if isinstance(what, dispatch.Wake) else dispatch.Wake.everything(what)
        try:
            with db.begin() as conn:
                sent = dispatch.dispatch(conn, queue, actor=DISPATCHER, now=utcnow(), wake=wake, budget=budget)
        except LedgerUnavailableError as exc:
            log.warning("could not dispatch queue %s (%s); the dispatch_held loop will", queue, exc)
            continue
        publish(sent, dispatched=True)
        started += sent
    return started


def revoke_deliveries(delivery_ids: Sequence[uuid.UUID], *, signal: str = "SIGKILL") -> None:
    """Kill these deliveries wherever they run; best effort, the fence is the guarantee."""
    if not delivery_ids:
        return
    try:
        app.control.revoke([str(d) for d in delivery_ids], terminate=True, signal=signal)
    except BROKER_ERRORS as exc:
        log.warning("could not revoke %d deliveries: %s", len(delivery_ids), exc)


CANCEL_COMMAND = "medic_cancel"  # worker/runtime/cancel_wakeup.py answers it


def announce_cancel(delivery_ids: Sequence[uuid.UUID]) -> None:
    """Tell the workers running these deliveries that their cancel was requested, so they read it
    from the ledger now rather than at their next heartbeat; best effort, kills nothing (off with
    MEDIC_CANCEL_BROADCAST=false: the heartbeat alone then carries the request)."""
    if not delivery_ids or not get_settings().cancel_broadcast:
        return
    try:
        app.control.broadcast(CANCEL_COMMAND, arguments={"deliveries": [str(d) for d in delivery_ids]})
    except BROKER_ERRORS as exc:
        log.warning("could not announce %d cancel requests: %s", len(delivery_ids), exc)
