"""Smoothed per-queue arrival and drain rates, derived from the counters in `worker.broker.counters`.

An exponentially weighted moving average, so one slow second does not swing admission or scaling.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from worker.broker import counters, redis_keys
from worker.broker.redis_client import get_redis


@dataclass(frozen=True)
class Rates:
    arrival: float  # jobs per second entering the queue
    drain: float  # jobs per second leaving it (claimed by workers)


def update_rates(queue: str, *, tau_s: float, now: float | None = None) -> Rates:
    """Sample the counters and fold them into the smoothed rates (time constant `tau_s`)."""
    r = get_redis()
    now = time.time() if now is None else now
    arrived, drained = counters.read(queue)
    prev = r.hgetall(redis_keys.rates(queue))
    if not prev:
        r.hset(
            redis_keys.rates(queue),
            mapping={"at": now, "arrived": arrived, "drained": drained, "arrival": 0, "drain": 0},
        )
        return Rates(0.0, 0.0)
    dt = max(1e-3, now - float(prev["at"]))
    alpha = 1 - math.exp(-dt / tau_s)
    arrival = (1 - alpha) * float(prev["arrival"]) + alpha * max(0, arrived - int(prev["arrived"])) / dt
    drain = (1 - alpha) * float(prev["drain"]) + alpha * max(0, drained - int(prev["drained"])) / dt
    r.hset(
        redis_keys.rates(queue),
        mapping={"at": now, "arrived": arrived, "drained": drained, "arrival": arrival, "drain": drain},
    )
    return Rates(round(arrival, 3), round(drain, 3))


def current_rates(queue: str) -> Rates:
    prev = get_redis().hgetall(redis_keys.rates(queue))
    return Rates(float(prev.get("arrival", 0)), float(prev.get("drain", 0)))
