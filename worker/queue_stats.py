"""Per-queue arrival and drain counters in Redis, and the smoothed rates derived from them.

Counters are bumped where work enters (enqueue) and leaves (claim) a queue; the
apply_backpressure loop turns them into rates (an exponentially weighted moving average, so one
slow second does not swing admission or scaling).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

from worker import keys
from worker.redis_client import get_redis

log = logging.getLogger(__name__)

ARRIVED = "enqueued"
DRAINED = "drained"


def record_arrivals(per_queue: Mapping[str, int]) -> None:
    """Best effort: a Redis outage must not fail an enqueue the ledger already accepted."""
    if not per_queue:
        return
    try:
        pipe = get_redis().pipeline(transaction=False)
        pipe.sadd(keys.known_queues(), *per_queue)
        for queue, n in per_queue.items():
            pipe.incrby(keys.queue_counter(queue, ARRIVED), n)
        pipe.execute()
    except Exception as exc:  # noqa: BLE001
        log.debug("arrival counters not updated: %s", exc)


def record_drained(per_queue: Mapping[str, int]) -> None:
    """Jobs claimed per queue since the last call (workers flush it with each heartbeat)."""
    if not per_queue:
        return
    try:
        pipe = get_redis().pipeline(transaction=False)
        for queue, n in per_queue.items():
            pipe.incrby(keys.queue_counter(queue, DRAINED), n)
        pipe.execute()
    except Exception as exc:  # noqa: BLE001
        log.debug("drain counters not updated: %s", exc)


def known_queues() -> list[str]:
    return sorted(get_redis().smembers(keys.known_queues()))


@dataclass(frozen=True)
class Rates:
    arrival: float  # jobs per second entering the queue
    drain: float  # jobs per second leaving it (claimed by workers)


def update_rates(queue: str, *, tau_s: float, now: float | None = None) -> Rates:
    """Sample the counters and fold them into the smoothed rates (time constant `tau_s`)."""
    r = get_redis()
    now = time.time() if now is None else now
    arrived, drained = (
        int(v or 0) for v in r.mget(keys.queue_counter(queue, ARRIVED), keys.queue_counter(queue, DRAINED))
    )
    prev = r.hgetall(keys.rates(queue))
    if not prev:
        r.hset(keys.rates(queue), mapping={"at": now, "arrived": arrived, "drained": drained, "arrival": 0, "drain": 0})
        return Rates(0.0, 0.0)
    dt = max(1e-3, now - float(prev["at"]))
    alpha = 1 - math.exp(-dt / tau_s)
    arrival = (1 - alpha) * float(prev["arrival"]) + alpha * max(0, arrived - int(prev["arrived"])) / dt
    drain = (1 - alpha) * float(prev["drain"]) + alpha * max(0, drained - int(prev["drained"])) / dt
    r.hset(
        keys.rates(queue),
        mapping={"at": now, "arrived": arrived, "drained": drained, "arrival": arrival, "drain": drain},
    )
    return Rates(round(arrival, 3), round(drain, 3))


def current_rates(queue: str) -> Rates:
    prev = get_redis().hgetall(keys.rates(queue))
    return Rates(float(prev.get("arrival", 0)), float(prev.get("drain", 0)))
