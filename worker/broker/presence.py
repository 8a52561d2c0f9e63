"""Worker presence: per worker process a TTL'd key naming its incarnation (a random id made at
process start) and the deliveries it holds, so recovery can ask "is the process that claimed this
delivery still there, and does it still hold it?" before it takes a job away. Written by the
heartbeat thread, read by recover_stuck; a sorted set of live incarnations feeds /health/ready.

The key stays per (hostname, pid), the two things the job row records; its value says which
incarnation wrote it, so a container restarted with the same hostname and pid (pid 1) does not
vouch for the jobs of the process it replaced: the new incarnation holds none of them.

A worker's main process also registers the queues it consumes (a sorted set per queue, scored by
time) every heartbeat: `MedicQueueUnconsumed` and `medic health --role worker` read it. A worker
that has run no job has no presence key, so presence alone cannot say a queue is consumed.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from worker.broker import redis_keys
from worker.broker.redis_client import get_redis
from worker.settings import get_settings


@dataclass(frozen=True)
class Presence:
    """What one presence key says: the process incarnation and the deliveries it holds."""

    incarnation: str
    held: frozenset[str]

    def holds(self, delivery_id: uuid.UUID) -> bool:
        return str(delivery_id) in self.held


def announce(
    worker: str,
    pid: int,
    *,
    incarnation: str,
    held: Iterable[uuid.UUID],
    ttl_s: float,
    now: float | None = None,
) -> None:
    """Refresh a process's presence key and its entry in the live set, in one round trip."""
    now = time.time() if now is None else now
    deliveries = sorted(str(d) for d in held)
    value = json.dumps({"worker": worker, "pid": pid, "incarnation": incarnation, "held": deliveries})
    live = redis_keys.workers_live()
    pipe = get_redis().pipeline(transaction=False)
    pipe.set(redis_keys.worker_presence(worker, pid), value, px=max(1, int(ttl_s * 1000)))
    pipe.zadd(live, {f"{worker}:{pid}:{incarnation}": now})
    # Prune here too, so the set stays bounded even if no one asks /health/ready.
    pipe.zremrangebyscore(live, "-inf", f"({now - ttl_s}")
    pipe.execute()


def lookup(processes: Sequence[tuple[str | None, int | None]]) -> list[Presence | None]:
    """For each (worker, pid): its presence, or None when the key is gone. One round trip for all."""
    pipe = get_redis().pipeline(transaction=False)
    for worker, pid in processes:
        pipe.get(redis_keys.worker_presence(worker or "?", pid or 0))
    return [_parse(raw) for raw in pipe.execute()]


def holding(deliveries: Sequence[tuple[str | None, int | None, uuid.UUID]]) -> list[bool]:
    """For each (worker, pid, delivery_id): does that process's live incarnation hold it?"""
    found = lookup([(worker, pid) for worker, pid, _ in deliveries])
    return [p is not None and p.holds(d) for p, (_, _, d) in zip(found, deliveries, strict=True)]


def live_count(ttl_s: float, now: float | None = None) -> int:
    """Incarnations that beat within the last `ttl_s`; stale ones are dropped on the way.
    Bounded by the fleet's size, where a SCAN for presence keys walked the whole keyspace."""
    now = time.time() if now is None else now
    live = redis_keys.workers_live()
    pipe = get_redis().pipeline(transaction=False)
    pipe.zremrangebyscore(live, "-inf", f"({now - ttl_s}")
    pipe.zcard(live)
    return int(pipe.execute()[1])


def _parse(raw: bytes | str | None) -> Presence | None:
    if raw is None:
        return None
    # Only the heartbeat writes these keys; a value it could not have written vouches for nothing.
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("held"), list):
        return None
    return Presence(str(value.get("incarnation")), frozenset(str(d) for d in value["held"]))


def consumer_member(hostname: str) -> str:
    return f"{hostname}:{os.getpid()}"


def register_consumer(hostname: str, queues: list[str], now: float | None = None) -> None:
    """Say "this worker consumes `queues`" for the next presence TTL; prunes stale entries."""
    now = time.time() if now is None else now
    ttl_s = get_settings().presence_ttl_seconds
    pipe = get_redis().pipeline(transaction=False)
    for queue in queues:
        key = redis_keys.queue_consumers(queue)
        pipe.zadd(key, {consumer_member(hostname): now})
        pipe.zremrangebyscore(key, "-inf", f"({now - ttl_s}")
    pipe.execute()


def unregister_consumer(hostname: str, queues: list[str]) -> None:
    pipe = get_redis().pipeline(transaction=False)
    for queue in queues:
        pipe.zrem(redis_keys.queue_consumers(queue), consumer_member(hostname))
    pipe.execute()


def live_consumers(queue: str, now: float | None = None) -> list[str]:
    """Workers (hostname:pid) that registered as consumers of `queue` within the presence TTL."""
    now = time.time() if now is None else now
    ttl_s = get_settings().presence_ttl_seconds
    return list(get_redis().zrangebyscore(redis_keys.queue_consumers(queue), now - ttl_s, "+inf"))
