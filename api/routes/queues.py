"""GET /queues: what an operator asks first when a page fires; pausing and resuming a queue."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body
from starlette.concurrency import run_in_threadpool

from api.deps import AdminKey
from api.schemas import QueueControlPublic, QueuePause
from worker.accept import admission, paused
from worker.broker import redis_keys
from worker.broker.counters import known_queues
from worker.broker.redis_client import get_redis
from worker.control.rates import current_rates
from worker.ledger import db, decisions, queries
from worker.ledger.apikeys import ApiKey
from worker.ledger.dispatch import QueueControl

router = APIRouter(tags=["queues"])


def queue_report(queue: str, control: QueueControl | None = None) -> dict[str, Any]:
    wm = admission.watermarks(queue)
    published = admission.published_state(queue)
    scale = get_redis().hgetall(redis_keys.scale(queue))
    rates = current_rates(queue)
    last = decisions.latest(queue, decisions.SCALE)
    with db.connect() as conn:
        counts = queries.live_counts(conn, queue)
    control = control or QueueControl(queue)
    return {
        "queue": queue,
        "depth": admission.depth(queue),  # the broker's messages and the held jobs
        **counts,
        # the loop's view; "unknown" when it has not published lately (the API then decides alone)
        "admission": published.get("state", "unknown"),
        # an operator's pause (POST /queues/{queue}/pause): nothing starts; admission per paused_admission
        "paused": control.paused,
        "paused_admission": paused.admission_of(control),
        "paused_at": control.paused_at,
        "paused_by": control.paused_by,
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
    """Per queue: depth, ready and running jobs, admission, pause, watermarks, rates, concurrency.

    Admin only: the queue names are every tenant's. A paused queue is listed even if unused.
    """
    controls = paused.controls()
    return {"queues": [queue_report(q, controls.get(q)) for q in sorted({*known_queues(), *controls})]}


def _actor(key: ApiKey) -> str:
    return f"api:{key.id}"


@router.post("/queues/{queue}/pause", response_model=QueueControlPublic)
async def pause(queue: str, key: AdminKey, body: Annotated[QueuePause | None, Body()] = None) -> dict[str, Any]:
    """Pause a queue, durably: nothing of it starts (jobs already sent are parked `held` at their
    claim) until it is resumed. Admission goes on (`accept`) or answers 429 queue_paused
    (`refuse`). Idempotent; audited (control decision `pause`). Admin only."""
    refuse = body is not None and body.admission == paused.REFUSE
    done = await run_in_threadpool(paused.pause_queue, queue, actor=_actor(key), refuse=refuse)
    return {**paused.public(done.control), "changed": done.changed}


@router.post("/queues/{queue}/resume", response_model=QueueControlPublic)
async def resume(queue: str, key: AdminKey) -> dict[str, Any]:
    """Resume a queue and dispatch its held jobs at once (bounded; the dispatch loop sends the
    rest). Idempotent; audited (control decision `resume`). Admin only."""
    done = await run_in_threadpool(paused.resume_queue, queue, actor=_actor(key))
    return {**paused.public(done.control), "changed": done.changed, "dispatched": done.dispatched}
