"""How many worker slots a queue needs, and the scalers that make it so.

The estimate uses Little's law on what the ledger and the broker already measure: the mean
service time is W = running / drain rate, so the slots needed to keep up with arrivals and
clear the backlog within `target_drain_seconds` are W x (arrival + depth / target). It scales up
at once and down only after a cooldown, always within [min, max].
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Protocol

from worker.broker import redis_keys
from worker.broker.celery_app import CONTROL_QUEUE, app
from worker.broker.redis_client import get_redis


@dataclass(frozen=True)
class ScaleInputs:
    depth: int
    arrival: float
    drain: float
    running: int
    current: int
    min_slots: int
    max_slots: int
    target_drain_s: float
    cooldown_s: float
    seconds_since_change: float | None


def desired_slots(i: ScaleInputs) -> tuple[int, str]:
    """(desired slots, why) for one queue."""
    if i.drain > 0 and i.running > 0:
        service_s = i.running / i.drain
        needed = math.ceil(service_s * (i.arrival + i.depth / i.target_drain_s))
        why = (
            f"service {service_s:.2f}s x ({i.arrival:.2f}/s arriving + {i.depth} waiting / {i.target_drain_s:.0f}s)"
            f" = {needed}"
        )
    elif i.depth > 0:
        needed = max(2 * i.current, 1)
        why = f"{i.depth} waiting and no drain measured yet: doubling"
    elif i.running > 0:
        needed = i.current
        why = f"{i.running} running, no completions measured yet: holding"
    else:
        needed = 0
        why = "idle"
    desired = max(i.min_slots, min(i.max_slots, needed))
    if desired < i.current and i.seconds_since_change is not None and i.seconds_since_change < i.cooldown_s:
        left = i.cooldown_s - i.seconds_since_change
        return i.current, f"{why}; scale-down to {desired} held by cooldown ({left:.0f}s left)"
    return desired, why


class Scaler(Protocol):
    name: str

    def current(self, queue: str) -> int: ...

    def apply(self, queue: str, current: int, desired: int) -> str: ...


class NoScaler:
    """Decide and record only: an external scaler (KEDA, an HPA) acts on the published desire."""

    name = "none"

    def current(self, queue: str) -> int:
        value = get_redis().hget(redis_keys.scale(queue), "desired")
        return int(value) if value is not None else 0

    def apply(self, queue: str, current: int, desired: int) -> str:
        return f"recorded desired={desired}; no scaler applies it"


class CeleryScaler:
    """pool_grow / pool_shrink on the prefork workers that consume the queue.

    `inspect stats` reports the pool's max-concurrency as it was at start, so slots are counted
    as len(pool.processes).
    """

    name = "celery"

    def __init__(self, timeout_s: float = 1.0) -> None:
        self.timeout_s = timeout_s

    def _workers(self, queue: str) -> dict[str, int]:
        inspect = app.control.inspect(timeout=self.timeout_s)
        consuming = [
            worker
            for worker, queues in (inspect.active_queues() or {}).items()
            if any(q.get("name") == queue for q in queues) and worker.split("@")[0] != "control"
        ]
        if not consuming:
            return {}
        stats = app.control.inspect(timeout=self.timeout_s, destination=consuming).stats() or {}
        return {worker: len(stats[worker]["pool"].get("processes", [])) for worker in consuming if worker in stats}

    def current(self, queue: str) -> int:
        return sum(self._workers(queue).values())

    def apply(self, queue: str, current: int, desired: int) -> str:
        workers = self._workers(queue)
        if not workers:
            return "no worker consumes this queue"
        delta = desired - sum(workers.values())
        steps: list[str] = []
        for worker, slots in sorted(workers.items(), key=lambda kv: kv[1]):  # grow the smallest first
            if delta > 0:
                share = math.ceil(delta / len(workers))
                app.control.pool_grow(share, destination=[worker])
                steps.append(f"{worker} +{share}")
                delta -= share
            elif delta < 0 and slots > 1:
                share = min(slots - 1, -delta)  # a worker keeps one slot
                app.control.pool_shrink(share, destination=[worker])
                steps.append(f"{worker} -{share}")
                delta += share
        return ", ".join(steps) or "nothing to change"


class ProcessScaler:
    """`medic up` starts and stops local worker processes (one slot each) toward the desired count."""

    name = "process"

    def current(self, queue: str) -> int:
        value = get_redis().hget(redis_keys.scale(queue), "processes")
        return int(value) if value is not None else 0

    def apply(self, queue: str, current: int, desired: int) -> str:
        get_redis().hset(redis_keys.scale(queue), mapping={"desired": desired, "desired_at": time.time()})
        return f"asked the supervisor for {desired} worker processes"


def get_scaler(name: str) -> Scaler:
    scalers: dict[str, Scaler] = {"none": NoScaler(), "celery": CeleryScaler(), "process": ProcessScaler()}
    return scalers[name]


def scalable(queue: str) -> bool:
    return queue != CONTROL_QUEUE
