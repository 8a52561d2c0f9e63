"""apply_backpressure: per queue, measure depth and rates, decide accepting / shedding with
hysteresis, and publish the decision (with a TTL) for the API's gate.

A queue's depth counts its jobs held in the ledger for the dispatcher as well as the broker's
messages: each period this loop sets the queue's held counter (which the gate reads) from the
ledger's count, so a dispatched queue's backlog sheds like any other."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from worker.accept import admission
from worker.broker import counters, redis_keys
from worker.broker.counters import known_queues
from worker.broker.redis_client import get_redis
from worker.control.rates import update_rates
from worker.errors import LedgerUnavailableError
from worker.ledger import db, decisions, queries
from worker.settings import get_settings

log = logging.getLogger(__name__)
Published = dict[str, Any]


def count_held(queue: str, wm: admission.Watermarks) -> None:
    """Set the queue's held counter from the ledger: counted up to past the hard limit, all the
    gate needs. Jobs the accept path counted while this ran may be left out until the next
    period; with the ledger down the counter keeps what the accept path added."""
    try:
        with db.connect() as conn:
            held = queries.held_in_queue(conn, queue, up_to=wm.hard + 1)
    except LedgerUnavailableError as exc:
        log.warning("held jobs of %s not counted: %s", queue, exc)
        return
    counters.set_held({queue: held})


def assess(queue: str, now: dt.datetime) -> tuple[str, str, Published]:
    """(previous state, new state, everything published) for one queue."""
    s = get_settings()
    wm = admission.watermarks(queue, s)
    count_held(queue, wm)
    depth = admission.depth(queue)
    rates = update_rates(queue, tau_s=5 * s.backpressure_period_seconds, now=now.timestamp())
    previous = get_redis().hget(redis_keys.admission(queue), "state") or admission.ACCEPTING
    state = admission.next_state(previous, depth, wm)
    published: Published = {
        "state": state,
        "depth": depth,
        "high_watermark": wm.high,
        "low_watermark": wm.low,
        "hard_limit": wm.hard,
        "drain_rate": rates.drain,
        "arrival_rate": rates.arrival,
        "retry_after": admission.retry_after(depth, wm.low, rates.drain, s),
        "updated_at": now.timestamp(),
    }
    return previous, state, published


def apply_backpressure(now: dt.datetime) -> dict[str, int]:
    s = get_settings()
    ttl_ms = int(max(2.0, 3 * s.backpressure_period_seconds) * 1000)
    counts = {"queues": 0, "shedding": 0, "transitions": 0}
    for queue in known_queues():
        previous, state, published = assess(queue, now)
        pipe = get_redis().pipeline(transaction=True)
        pipe.hset(redis_keys.admission(queue), mapping=published)  # type: ignore[arg-type]
        pipe.pexpire(redis_keys.admission(queue), ttl_ms)
        pipe.execute()
        counts["queues"] += 1
        counts["shedding"] += state == admission.SHEDDING
        if state != previous:
            counts["transitions"] += 1
            wm = f"high {published['high_watermark']}, low {published['low_watermark']}"
            summary = f"{previous} -> {state} at depth {published['depth']} ({wm})"
            log.warning("admission %s: %s", queue, summary)
            decisions.record(decisions.ADMISSION, queue, summary, published, now=now)
    return counts
