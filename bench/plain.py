"""Plain Celery, the baseline medic is measured against: configured the way a careful team would
(acks_late, reject_on_worker_lost, prefetch 1) and otherwise on defaults, and a bare FastAPI
`POST /jobs` that parses a job-shaped body and only calls `apply_async` (no auth, no ledger, no
validation against a signature).

    celery -A bench.plain:celery worker ...                           # bench.common.start_plain_worker
    uvicorn bench.plain:api --host 127.0.0.1 --port 8001 --no-access-log

Keys under BENCH_PLAIN_PREFIX on BENCH_REDIS_URL (bench.common.MedicRun sets both). The task
messages go to BENCH_BROKER_URL when it is set (RabbitMQ: bench/brokers.py), configured as medic
configures RabbitMQ (`config`); the tasks' records stay in Redis.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import Celery
from fastapi import FastAPI
from pydantic import BaseModel, Field

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("BENCH_PLAIN_PREFIX", "bench-plain:")
BROKER_URL = os.environ.get("BENCH_BROKER_URL") or REDIS_URL


def config(broker_url: str) -> dict[str, Any]:
    """acks_late, reject_on_worker_lost, prefetch 1, no results; on RabbitMQ the queue type and
    publisher confirms medic uses there (worker/broker/celery_app.py `rabbitmq_config`), so the two
    sides differ only in medic itself."""
    shared: dict[str, Any] = {
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "worker_hijack_root_logger": False,
    }
    if broker_url.startswith("amqp"):
        queue_type = os.environ.get("MEDIC_RABBITMQ_QUEUE_TYPE", "quorum")
        return {
            **shared,
            "broker_transport_options": {"confirm_publish": True},
            "task_default_queue_type": queue_type,
            "task_create_missing_queue_type": queue_type,
        }
    # isolation only; visibility_timeout stays 3600 s
    return {**shared, "broker_transport_options": {"global_keyprefix": PREFIX}}


celery = Celery("plain", broker=BROKER_URL)
celery.conf.update(config(BROKER_URL))
records = redis.Redis.from_url(REDIS_URL, decode_responses=True)


@celery.task(name="plain.sleep")
def plain_sleep(seconds: float, tag: str) -> None:
    records.hset(f"{PREFIX}started", tag, time.time())
    time.sleep(seconds)
    records.hset(f"{PREFIX}finished", tag, time.time())


@celery.task(name="plain.noop")
def plain_noop() -> None:
    return None


@celery.task(name="plain.noop_done")
def plain_noop_done(tag: str) -> None:
    """A no-op that records its completion (a count and a time, one round trip) so a bench can
    time a whole batch from the first publish to the last completion."""
    pipe = records.pipeline(transaction=False)
    pipe.incr(f"{PREFIX}done:{tag}")
    pipe.rpush(f"{PREFIX}done_at:{tag}", time.time())
    pipe.execute()


api = FastAPI(title="plain-celery-api")


class JobIn(BaseModel):
    type: str
    args: dict[str, Any] = Field(default_factory=dict)
    queue: str | None = None


@api.post("/jobs", status_code=202)
def submit(body: JobIn) -> dict[str, str]:
    """A sync route, like medic's POST /jobs, so both run in the same threadpool."""
    return {"id": str(plain_noop.apply_async(queue=body.queue).id), "state": "queued"}


@api.get("/health/live")
def live() -> dict[str, str]:
    return {"status": "ok"}
