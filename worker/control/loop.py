"""What every control loop shares: a singleton lock, a clock, and a record of each run.

A loop is a plain function `fn(now) -> dict of counts`; `run_loop` takes a Redis lock so two
control workers (or two beats) never run the same loop at once, and records the run so health
checks and tests can see that loops are alive and what they did.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from worker.broker import redis_keys
from worker.broker.redis_client import get_redis
from worker.broker.scripts import run_script
from worker.clock import utcnow
from worker.ledger.records import Job
from worker.ledger.states import JobState

log = logging.getLogger(__name__)

LoopFn = Callable[[dt.datetime], dict[str, int]]


def run_loop(name: str, fn: LoopFn, *, lock_ttl_s: float) -> dict[str, Any]:
    """Run `fn` once if no other run of `name` holds the lock; returns what it did."""
    r = get_redis()
    token = uuid.uuid4().hex
    if not r.set(redis_keys.control_lock(name), token, nx=True, px=max(1, int(lock_ttl_s * 1000))):
        return {"skipped": "another run holds the lock"}
    started = time.monotonic()
    try:
        counts = fn(utcnow())
    finally:
        run_script("release_lock", [redis_keys.control_lock(name)], [token])
    elapsed = round(time.monotonic() - started, 4)
    record = {"at": time.time(), "seconds": elapsed, **counts}
    pipe = r.pipeline(transaction=False)
    pipe.hset(redis_keys.control_stats(name), mapping={"last": json.dumps(record)})
    pipe.hincrby(redis_keys.control_stats(name), "runs", 1)
    for counter, value in counts.items():
        if value:
            pipe.hincrby(redis_keys.control_stats(name), f"total:{counter}", value)
    pipe.execute()
    if any(counts.values()):
        log.info("%s: %s", name, counts)
    return record


def loop_stats(name: str) -> dict[str, Any]:
    raw = get_redis().hgetall(redis_keys.control_stats(name))
    stats: dict[str, Any] = {k: int(v) for k, v in raw.items() if k != "last"}
    if "last" in raw:
        stats["last"] = json.loads(raw["last"])
    return stats


def sort_outcomes(after: Iterable[Job | None]) -> dict[str, int]:
    """How many jobs a loop gave back ended `queued` (to run again) and `dead`, and how many it
    `stopped` (`cancelled`: their cancel was requested, so they are never given back)."""
    done = [row for row in after if row is not None]
    return {
        "requeued": sum(row.state in (JobState.QUEUED, JobState.HELD) for row in done),
        "dead": sum(row.state == JobState.DEAD for row in done),
        "stopped": sum(row.state == JobState.CANCELLED for row in done),
    }
