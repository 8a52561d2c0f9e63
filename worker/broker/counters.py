"""Per-queue arrival and drain counters in Redis, and the set of queues ever used.

Counters are bumped where work enters (enqueue) and leaves (claim) a queue; the
apply_backpressure loop turns them into rates (`worker.control.rates`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from redis.client import Pipeline

from worker.broker import redis_keys
from worker.broker.redis_client import get_redis

log = logging.getLogger(__name__)

ARRIVED = "enqueued"
DRAINED = "drained"


def add_arrivals(pipe: Pipeline[str], per_queue: Mapping[str, int]) -> None:
    """Queue the arrival counters' commands on `pipe`: publish() sends them in the same round
    trip as the messages, so counting an arrival costs no round trip of its own."""
    if not per_queue:
        return
    pipe.sadd(redis_keys.known_queues(), *per_queue)
    for queue, n in per_queue.items():
        pipe.incrby(redis_keys.queue_counter(queue, ARRIVED), n)


def record_drained(per_queue: Mapping[str, int]) -> None:
    """Jobs claimed per queue since the last call (workers flush it with each heartbeat)."""
    if not per_queue:
        return
    try:
        pipe = get_redis().pipeline(transaction=False)
        for queue, n in per_queue.items():
            pipe.incrby(redis_keys.queue_counter(queue, DRAINED), n)
        pipe.execute()
    except Exception as exc:  # noqa: BLE001
        log.debug("drain counters not updated: %s", exc)


def known_queues() -> list[str]:
    return sorted(get_redis().smembers(redis_keys.known_queues()))


def read(queue: str) -> tuple[int, int]:
    """(arrived, drained): the queue's counters now, in one round trip."""
    arrived, drained = get_redis().mget(
        redis_keys.queue_counter(queue, ARRIVED), redis_keys.queue_counter(queue, DRAINED)
    )
    return int(arrived or 0), int(drained or 0)
