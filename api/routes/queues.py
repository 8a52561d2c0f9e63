"""GET /queues: what an operator asks first when a page fires."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import AdminKey
from worker.accept import admission
from worker.broker import redis_keys
from worker.broker.counters import known_queues
from worker.broker.redis_client import get_redis
from worker.control.rates import current_rates
from worker.ledger import db, decisions, queries

router = APIRouter(tags=["queues"])


def queue_report(queue: str) -> dict[str, Any]:
    wm = admission.watermarks(queue)
    published = admission.published_state(queue)
    scale = get_redis().hgetall(redis_keys.scale(queue))
    rates = current_rates(queue)
    last = decisions.latest(queue, decisions.SCALE)
    with db.connect() as conn:
        counts = queries.live_counts(conn, queue)
    return {
        "queue": queue,
        "depth": admission.depth(queue),  # the broker's messages and the held jobs
        **counts,
        # the loop's view; "unknown" when it has not published lately (the API then decides alone)
        "admission": published.get("state", "unknown"),
        "high_watermark": wm.high,
        "low_watermark": wm.low,
        "hard_limit": wm.hard,
        "retry_after": int(published["retry_after"]) if "retry_after" in published else None,
        "arrival_rate": rates.arrival,
        "drain_rate": rates.drain,
        "concurrency": {
            "current": int(scale["current"]) if "current" in scale else None,
            "desired": int(scale["desired"]) if "desired" in scale else None,
            "why": scale.get("why"),
        },
        "last_scaling_decision": last[0] if last else None,
    }


@router.get("/queues")
def list_queues(_: AdminKey) -> dict[str, list[dict[str, Any]]]:
    """Per queue: depth, ready and running jobs, admission, watermarks, rates, concurrency.

    Admin only: the queue names are every tenant's.
    """
    return {"queues": [queue_report(q) for q in known_queues()]}
