"""Admission control: whether a queue accepts work, decided with hysteresis by the
apply_backpressure loop (worker/control/backpressure.py) and enforced when a job is accepted,
which also measures for itself.

The accept path's own check is one atomic Lua call: queue depth (the LLENs of the queue and its
priority sub-queues, plus its jobs waiting `held` in the ledger for the dispatcher) plus jobs
admitted but not yet published, against the watermark. So even
submissions arriving far faster than the loop's period cannot push a queue past its limit, and
a stale loop state never lets work through blindly.
"""

from __future__ import annotations

import contextlib
import logging
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from worker.broker import counters, inspect, redis_keys
from worker.broker.redis_client import get_redis
from worker.broker.scripts import run_script
from worker.errors import QueueFullError
from worker.ledger.records import NewJob
from worker.settings import Settings, get_settings

log = logging.getLogger(__name__)

ACCEPTING = "accepting"
SHEDDING = "shedding"
PENDING_TTL_MS = 10_000  # a reservation never released (its process died) stops counting after this


@dataclass(frozen=True)
class Watermarks:
    high: int
    low: int

    @property
    def hard(self) -> int:
        """The most a queue may hold, critical jobs included: high + max(10 %, 20 jobs)."""
        return self.high + max(math.ceil(self.high * 0.1), 20)


def depth(queue: str) -> int:
    """What a queue holds against its watermark (the gate adds its live reservations): the
    broker's messages (every priority) plus its jobs held in the ledger, as last counted. The one
    depth apply_backpressure, `GET /queues` and the health snapshot report."""
    return inspect.depth(queue) + counters.read_held(queue)


def watermarks(queue: str, s: Settings | None = None) -> Watermarks:
    s = s or get_settings()
    high, low = s.queue_watermarks.get(queue, (s.high_watermark, s.low_watermark))
    return Watermarks(high=high, low=min(low, high))


def next_state(current: str, depth: int, wm: Watermarks) -> str:
    """Hysteresis: start shedding at the high watermark, accept again only at the low one."""
    if current == SHEDDING:
        return ACCEPTING if depth <= wm.low else SHEDDING
    return SHEDDING if depth >= wm.high else ACCEPTING


def retry_after(depth: int, low: int, drain_rate: float, s: Settings | None = None) -> int:
    """Seconds until the queue drains to its low watermark at the measured rate, clamped."""
    s = s or get_settings()
    if drain_rate <= 0:
        return s.retry_after_max_seconds
    seconds = math.ceil(max(0, depth - low) / drain_rate)
    return max(s.retry_after_min_seconds, min(s.retry_after_max_seconds, seconds))


@dataclass
class Reservation:
    """Room for `n` jobs in `queue`, held until they are published (or the API gives up).

    `member` is this reservation's own entry in the queue's reservations ("" when none was made:
    Redis was down). It expires by itself after the TTL, so a process killed while holding it
    leaks nothing for longer than that.
    """

    queue: str
    n: int
    member: str = ""

    def entry(self) -> tuple[str, str] | None:
        """(sorted set, member) of this reservation while it is held, for a caller that removes
        it in a round trip of its own (the publish pipeline); then `removed()`."""
        return (redis_keys.admission_reservations(self.queue), self.member) if self.member else None

    def removed(self) -> None:
        """The caller removed the entry: a later `release()` is a no-op."""
        self.member = ""

    def release(self) -> None:
        if not self.member:
            return
        # ZREM of our own member: after expiry (or a second release) it is a no-op, never a
        # negative count. One we could not remove is cleared by its expiry.
        with contextlib.suppress(Exception):
            get_redis().zrem(redis_keys.admission_reservations(self.queue), self.member)
        self.member = ""


def reserved(queue: str) -> int:
    """Jobs held by live (unexpired) reservations in `queue`."""
    seconds, micros = get_redis().time()
    now_ms = seconds * 1000 + micros // 1000
    live = get_redis().zrangebyscore(redis_keys.admission_reservations(queue), f"({now_ms}", "+inf")
    return sum(int(str(member).rsplit(":", 1)[1]) for member in live)


def admit(queue: str, n: int, priority: int, *, ttl_ms: int = PENDING_TTL_MS) -> Reservation:
    """Reserve room for `n` jobs of `priority` in `queue` for at most `ttl_ms`.

    Raises:
        QueueFullError: the queue is shedding, or the jobs would take it past its watermark.
    """
    s = get_settings()
    wm = watermarks(queue, s)
    critical = priority >= s.critical_priority
    limit = wm.hard if critical else wm.high
    member = f"{uuid.uuid4().hex}:{n}"
    keys = [redis_keys.admission(queue), redis_keys.admission_reservations(queue), redis_keys.held_count(queue)]
    try:
        if s.on_rabbitmq:  # its depth is not in Redis: read before the script, the reservations stay exact
            broker_depth = inspect.depth(queue)
        else:
            broker_depth = 0
            keys += redis_keys.queue_lists(queue)
        ok, depth, state, rate = run_script("admit", keys, [limit, n, int(critical), ttl_ms, member, broker_depth])
    except inspect.READ_ERRORS as exc:
        # Fail open: with Redis down the queue cannot grow, and the outbox keeps what we accept.
        log.warning("admission check for %s skipped, Redis or the broker unavailable: %s", queue, exc)
        return Reservation(queue, 0)
    if not int(ok):
        depth = int(depth)
        raise QueueFullError(
            f"queue {queue!r} is {'shedding load' if state == SHEDDING else 'full'}; retry later",
            queue=queue,
            depth=depth,
            high_watermark=wm.high,
            low_watermark=wm.low,
            retry_after=retry_after(depth, wm.low, float(rate or 0), s),
        )
    return Reservation(queue, n, member)


def published_state(queue: str) -> dict[str, Any]:
    """What apply_backpressure last published for `queue` (empty when stale)."""
    return dict(get_redis().hgetall(redis_keys.admission(queue)))


def admit_jobs(news: Sequence[NewJob]) -> list[Reservation]:
    """Reserve room for validated jobs, queue by queue; all or nothing.

    A group gets the critical headroom only if every job in it is critical.

    Raises:
        QueueFullError
    """
    groups: dict[str, list[int]] = {}
    for new in news:
        groups.setdefault(new.queue, []).append(new.priority)
    held: list[Reservation] = []
    try:
        for queue, priorities in groups.items():
            held.append(admit(queue, len(priorities), min(priorities)))
    except BaseException:
        for reservation in held:
            reservation.release()
        raise
    return held
