"""Worker presence: a TTL'd key per worker process, so recovery can ask "is that process still
there?" before it takes a job away. Written by the heartbeat thread, read by recover_stuck."""

from __future__ import annotations

import json
from collections.abc import Sequence

from worker.broker import redis_keys
from worker.broker.redis_client import get_redis


def announce(worker: str, pid: int, *, ttl_s: float, jobs: int) -> None:
    value = json.dumps({"worker": worker, "pid": pid, "jobs": jobs})
    get_redis().set(redis_keys.worker_presence(worker, pid), value, px=max(1, int(ttl_s * 1000)))


def alive(processes: Sequence[tuple[str | None, int | None]]) -> list[bool]:
    """For each (worker, pid): is its presence key still there? One round trip for all."""
    pipe = get_redis().pipeline(transaction=False)
    for worker, pid in processes:
        pipe.exists(redis_keys.worker_presence(worker or "?", pid or 0))
    return [bool(n) for n in pipe.execute()]
