"""GET /queues: what an operator asks first when a page fires."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import ReadKey
from worker import admission, broker, decisions, keys
from worker.control.backpressure import ledger_counts
from worker.queue_stats import current_rates, known_queues
from worker.redis_client import get_redis

router = APIRouter(tags=["queues"])


def queue_report(queue: str) -> dict[str, Any]:
    wm = admission.watermarks(queue)
    published = admission.published_state(queue)
    scale = get_redis().hgetall(keys.scale(queue))
    rates = current_rates(queue)
    last = decisions.latest(queue, decisions.SCALE)
    return {
        "queue": queue,
        "depth": broker.depth(queue),
        **ledger_counts(queue),
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
def list_queues(_: ReadKey) -> dict[str, list[dict[str, Any]]]:
    """Per queue: depth, ready and running jobs, admission, watermarks, rates, concurrency."""
    return {"queues": [queue_report(q) for q in known_queues()]}
