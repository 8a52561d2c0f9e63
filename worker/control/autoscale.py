"""autoscale: desired concurrency per queue from backlog, arrival and drain rates; applied by
the configured Scaler; every change (and every held scale-down) recorded with its inputs."""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import asdict

from worker.broker import inspect, redis_keys
from worker.broker.counters import known_queues
from worker.broker.redis_client import get_redis
from worker.control.rates import current_rates
from worker.control.scalers import ScaleInputs, desired_slots, get_scaler, scalable
from worker.ledger import db, decisions, queries
from worker.settings import get_settings

log = logging.getLogger(__name__)

# A change takes a moment to show: Celery's asynpool forks new children on its maintenance
# timer (every 5 s; seen here: a pool_grow showed up in len(pool.processes) up to 5 s later), a
# supervisor starts a process. Deciding again before then would count the old size and overshoot.
SETTLE_S = 6.0


def autoscale(now: dt.datetime) -> dict[str, int]:
    s = get_settings()
    scaler = get_scaler(s.scaler)
    counts = {"queues": 0, "up": 0, "down": 0, "held": 0}
    r = get_redis()
    for queue in filter(scalable, known_queues()):
        state = r.hgetall(redis_keys.scale(queue))
        changed_at = float(state["changed_at"]) if "changed_at" in state else None
        if changed_at is not None and now.timestamp() - changed_at < SETTLE_S:
            continue
        rates = current_rates(queue)
        with db.connect() as conn:
            running = queries.live_counts(conn, queue)["running"]
        inputs = ScaleInputs(
            depth=inspect.depth(queue),
            arrival=rates.arrival,
            drain=rates.drain,
            running=running,
            current=scaler.current(queue),
            min_slots=s.min_concurrency,
            max_slots=s.max_concurrency,
            target_drain_s=s.target_drain_seconds,
            cooldown_s=s.scale_down_cooldown_seconds,
            seconds_since_change=None if changed_at is None else now.timestamp() - changed_at,
        )
        desired, why = desired_slots(inputs)
        counts["queues"] += 1
        record = {
            **state,
            "desired": desired,
            "current": inputs.current,
            "why": why,
            "scaler": scaler.name,
            "at": time.time(),
        }
        if desired != inputs.current:
            outcome = scaler.apply(queue, inputs.current, desired)
            counts["up" if desired > inputs.current else "down"] += 1
            record["changed_at"] = now.timestamp()
            summary = f"{inputs.current} -> {desired} slots ({scaler.name}): {why}; {outcome}"
            log.info("autoscale %s: %s", queue, summary)
            decisions.record(decisions.SCALE, queue, summary, {**asdict(inputs), "desired": desired}, now=now)
        elif "held by cooldown" in why and "held by cooldown" not in state.get("why", ""):
            counts["held"] += 1
            decisions.record(decisions.SCALE, queue, f"hold at {desired}: {why}", asdict(inputs), now=now)
        r.hset(redis_keys.scale(queue), mapping=record)  # type: ignore[arg-type]
    return counts
