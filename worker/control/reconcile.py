"""reconcile_broker: queued jobs whose message the broker never got or lost -> a new delivery.

Re-sending is always safe: the new delivery_id makes any older message of the job stale, and a
stale message is dropped at the claim.
"""

from __future__ import annotations

import datetime as dt
import logging

from worker import logs
from worker.broker import inspect
from worker.broker.publish import commit_then_publish, publish_and_follow
from worker.clock import seconds
from worker.ledger import control_state, db, queries, release, transitions
from worker.ledger.records import Job
from worker.settings import get_settings

log = logging.getLogger(__name__)
ACTOR = "control:reconcile_broker"


def _republish(rows: list[Job], reason: str, now: dt.datetime) -> int:
    after = commit_then_publish(
        lambda conn: [transitions.republish(conn, row, actor=ACTOR, reason=reason, now=now) for row in rows]
    )
    for row, new in zip(rows, after, strict=True):
        if new is not None:  # the new delivery_id: the one the worker's lines will carry
            log.info("reconcile_broker: job %s re-sent (%s) as delivery %s", row.id, reason, new.delivery_id,
                     extra=logs.job_extra(new, reason=reason))  # fmt: skip
    return sum(row is not None for row in after)


def after_broker_restart(now: dt.datetime, limit: int) -> int:
    """The Redis run_id differs from the one the ledger remembers: the broker restarted, and
    every message published before now may be lost. Re-send those jobs, `limit` per run, until
    none is left. The very first run only records the run_id (a fresh start is no restart).

    Not on RabbitMQ: its queues are durable and its messages persistent, so what it confirmed
    survives a restart; re-sending every queued job would only double its queues."""
    if get_settings().on_rabbitmq:
        return 0
    current = inspect.run_id()
    seen = control_state.get(control_state.BROKER_RUN_ID)
    if seen != current:
        if seen is not None:
            log.warning("broker run_id is %s (was %s): re-sending queued jobs", current, seen)
            control_state.put(control_state.REPUBLISH_BEFORE, now.isoformat(), now=now)
        control_state.put(control_state.BROKER_RUN_ID, current, now=now)
    marker = control_state.get(control_state.REPUBLISH_BEFORE)
    if marker is None:
        return 0
    with db.connect() as conn:
        rows = queries.published_before(conn, dt.datetime.fromisoformat(marker), limit)
    if len(rows) < limit:
        control_state.delete(control_state.REPUBLISH_BEFORE)
    return _republish(rows, "broker_restarted", now) if rows else 0


def never_published(now: dt.datetime, limit: int) -> int:
    """Jobs whose publish the broker refused (published_at cleared by the outbox)."""
    with db.connect() as conn:
        rows = queries.unpublished(conn, limit)
    return _republish(rows, "unpublished", now) if rows else 0


def lost_messages(now: dt.datetime, limit: int) -> int:
    """Jobs queued for long whose message is in no queue and in no worker's prefetch."""
    s = get_settings()
    cutoff = now - seconds(s.lost_after_seconds)
    with db.connect() as conn:
        rows = queries.queued_since_before(conn, cutoff, limit)
    if not rows:
        return 0
    wanted: dict[str, set[str]] = {}
    for r in rows:
        wanted.setdefault(r.queue, set()).add(str(r.delivery_id))
    lost = inspect.lost(wanted, s.reconcile_scan_limit)
    if lost is None:
        log.info("reconcile: queues too long to scan for lost messages; skipped")
        return 0
    missing = [r for r in rows if str(r.delivery_id) in lost]
    if not missing:
        return 0
    followed: list[Job] = []
    dead_rows: list[Job | None] = []
    with db.begin() as conn:
        resent = queries.count_events(conn, [r.id for r in missing], "message_lost")
        hopeless = [r for r in missing if resent.get(r.id, 0) >= s.max_redeliveries]
        for row in hopeless:
            detail = (
                f"its message was lost {resent[row.id]} times; does any worker consume {row.queue!r} with {row.type!r}?"
            )
            log.error("job %s is undeliverable: %s", row.id, detail, extra=logs.job_extra(row, reason="undeliverable"))
            dead = transitions.give_up_undeliverable(conn, row, actor=ACTOR, now=now, detail=detail)
            dead_rows.append(dead)
            followed.extend(release.follow(conn, [dead], actor=ACTOR, now=now))
    publish_and_follow([*followed, *dead_rows])  # `continue` may release some; the dead free their slots
    given_up = {r.id for r in hopeless}
    retry = [r for r in missing if r.id not in given_up]
    return _republish(retry, "message_lost", now) if retry else 0


def reconcile_broker(now: dt.datetime, *, limit: int | None = None) -> dict[str, int]:
    batch = limit or get_settings().control_batch_size
    return {
        "after_restart": after_broker_restart(now, batch),
        "unpublished": never_published(now, batch),
        "lost": lost_messages(now, batch),
    }
