"""apply_backpressure: per queue, measure depth and rates, decide accepting / shedding with
hysteresis, and publish the decision (with a TTL) for the API's gate."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import sqlalchemy as sa

from worker import admission, broker, db, decisions, keys
from worker.models import jobs
from worker.queue_stats import known_queues, update_rates
from worker.redis_client import get_redis
from worker.settings import get_settings
from worker.states import JobState

log = logging.getLogger(__name__)
Published = dict[str, Any]


def ledger_counts(queue: str) -> dict[str, int]:
    """Queued (ready) and running jobs of a queue: index range scans on (state, queue)."""
    with db.connect() as conn:
        rows = conn.execute(
            sa.select(jobs.c.state, sa.func.count())
            .where(jobs.c.queue == queue, jobs.c.state.in_([JobState.QUEUED.value, JobState.RUNNING.value]))
            .group_by(jobs.c.state)
        ).all()
    counts = {state: int(n) for state, n in rows}
    return {"ready": counts.get(JobState.QUEUED.value, 0), "running": counts.get(JobState.RUNNING.value, 0)}


def assess(queue: str, now: dt.datetime) -> tuple[str, str, Published]:
    """(previous state, new state, everything published) for one queue."""
    s = get_settings()
    wm = admission.watermarks(queue, s)
    depth = broker.depth(queue)
    rates = update_rates(queue, tau_s=5 * s.backpressure_period_seconds, now=now.timestamp())
    previous = get_redis().hget(keys.admission(queue), "state") or admission.ACCEPTING
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
        pipe.hset(keys.admission(queue), mapping=published)  # type: ignore[arg-type]
        pipe.pexpire(keys.admission(queue), ttl_ms)
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
