"""Plain Celery, configured the way a careful team would (acks_late, reject_on_worker_lost,
prefetch 1) and otherwise on defaults: the baseline medic is measured against."""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("BENCH_PLAIN_PREFIX", "bench-plain:")

app = Celery("plain", broker=REDIS_URL)
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    broker_transport_options={"global_keyprefix": PREFIX},  # isolation only; visibility_timeout stays 3600 s
    worker_hijack_root_logger=False,
)
_records = redis.Redis.from_url(REDIS_URL, decode_responses=True)


@app.task(name="plain.sleep")
def plain_sleep(seconds: float, tag: str) -> None:
    _records.hset(f"{PREFIX}started", tag, time.time())
    time.sleep(seconds)
    _records.hset(f"{PREFIX}finished", tag, time.time())


@app.task(name="plain.noop")
def plain_noop() -> None:
    return None


@app.task(name="plain.noop_done")
def plain_noop_done(tag: str) -> None:
    """A no-op that records its completion (a count and a time, one round trip) so a bench can
    time a whole batch from the first publish to the last completion."""
    pipe = _records.pipeline(transaction=False)
    pipe.incr(f"{PREFIX}done:{tag}")
    pipe.rpush(f"{PREFIX}done_at:{tag}", time.time())
    pipe.execute()
