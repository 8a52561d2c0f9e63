"""Per-queue arrival and drain counters in Redis, and the set of queues in use.

Counters are bumped where work enters (enqueue) and leaves (claim) a queue; the
apply_backpressure loop turns them into rates (`worker.control.rates`). The known queues are a
sorted set scored by each queue's last arrival, so a queue that is gone can be forgotten
(`forget_idle`, run by prune): the loops, `GET /queues` and the health probe walk it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping

from redis.client import Pipeline

from worker.broker import inspect, redis_keys
from worker.broker.redis_client import get_redis
from worker.broker.scripts import run_script
from worker.settings import get_settings

log = logging.getLogger(__name__)

ARRIVED = "enqueued"
DRAINED = "drained"


def add_arrivals(pipe: Pipeline[str], per_queue: Mapping[str, int]) -> None:
    """Queue the arrival counters' commands on `pipe`: publish() sends them in the same round
    trip as the messages, so counting an arrival costs no round trip of its own."""
    if not per_queue:
        return
    pipe.zadd(redis_keys.known_queues(), dict.fromkeys(per_queue, time.time()))
    for queue, n in per_queue.items():
        pipe.incrby(redis_keys.queue_counter(queue, ARRIVED), n)


def add_held(pipe: Pipeline[str], per_queue: Mapping[str, int]) -> None:
    """Queue the held counters' changes on `pipe`, in the publish round trip like the arrivals:
    + jobs written `held` (the dispatcher, not the broker, has them), - held jobs the dispatcher
    started (now in the broker's lists). The apply_backpressure loop replaces each counter with
    the ledger's count every period, so what this misses (a job parked or retried to `held`, a
    held job cancelled) or a race with that reset lasts one period at most."""
    for queue, n in per_queue.items():
        if n:
            pipe.incrby(redis_keys.held_count(queue), n)


def set_held(per_queue: Mapping[str, int]) -> None:
    """Set the held counters to the ledger's counts (apply_backpressure)."""
    if per_queue:
        get_redis().mset({redis_keys.held_count(queue): n for queue, n in per_queue.items()})


def read_held(queue: str) -> int:
    """Jobs of `queue` held in the ledger, as last counted (0 when never; a count that drifted
    below zero between two resets is 0)."""
    return max(0, int(get_redis().get(redis_keys.held_count(queue)) or 0))


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
    """Every queue in use (and those of the set kept before queues could be forgotten)."""
    pipe = get_redis().pipeline(transaction=False)
    pipe.zrange(redis_keys.known_queues(), 0, -1)
    pipe.smembers(redis_keys.legacy_known_queues())
    active, legacy = pipe.execute()
    return sorted({*active, *legacy})


def mark_active(queues: Iterable[str], now: float | None = None) -> None:
    """Record `queues` as in use at `now` (an arrival does this in its publish pipeline)."""
    scores: dict[str | bytes, float] = dict.fromkeys(queues, time.time() if now is None else now)
    if scores:
        get_redis().zadd(redis_keys.known_queues(), scores)


def forget_idle(now: float, idle_s: float) -> list[str]:
    """Forget every known queue with no arrival for `idle_s` whose lists are empty, with its
    counters and rates; returns them. A queue that gets a job again is known again at once.

    The set kept before this (a plain set) is moved over first, its queues counted as active
    `now`, so an upgrade forgets nothing early.
    """
    r = get_redis()
    legacy = r.smembers(redis_keys.legacy_known_queues())
    if legacy:
        moved: dict[str | bytes, float] = dict.fromkeys(legacy, now)
        r.zadd(redis_keys.known_queues(), moved, nx=True)
        r.delete(redis_keys.legacy_known_queues())
    forgotten = []
    on_rabbitmq = get_settings().on_rabbitmq
    for queue in r.zrangebyscore(redis_keys.known_queues(), "-inf", f"({now - idle_s}"):
        if on_rabbitmq and inspect.depth(queue) > 0:  # its messages are not in Redis: asked first
            continue
        lists = [] if on_rabbitmq else redis_keys.queue_lists(queue)
        also = [
            redis_keys.queue_counter(queue, ARRIVED),
            redis_keys.queue_counter(queue, DRAINED),
            redis_keys.held_count(queue),
        ]
        keys = [redis_keys.known_queues(), *lists, *also, redis_keys.rates(queue)]
        if int(run_script("forget_queue", keys, [queue, now - idle_s, len(lists)])):
            forgotten.append(queue)
    if forgotten:
        log.info("forgot %d idle, empty queues: %s", len(forgotten), ", ".join(forgotten))
    return forgotten


def read(queue: str) -> tuple[int, int]:
    """(arrived, drained): the queue's counters now, in one round trip."""
    arrived, drained = get_redis().mget(
        redis_keys.queue_counter(queue, ARRIVED), redis_keys.queue_counter(queue, DRAINED)
    )
    return int(arrived or 0), int(drained or 0)
