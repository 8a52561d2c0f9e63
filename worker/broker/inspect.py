"""What the broker holds, read straight from Redis with kombu's key layout (see `redis_keys`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from worker.broker import redis_keys
from worker.broker.redis_client import get_redis

log = logging.getLogger(__name__)


def depth(queue: str) -> int:
    """Messages waiting in `queue` (all priorities): four LLENs in one round trip."""
    pipe = get_redis().pipeline(transaction=False)
    for key in redis_keys.queue_lists(queue):
        pipe.llen(key)
    return int(sum(pipe.execute()))


def run_id() -> str:
    """The Redis server's run_id: it changes on every restart."""
    return str(get_redis().info("server")["run_id"])


def _delivery_id(raw: str) -> str | None:
    try:
        message = json.loads(raw)
        if isinstance(message, list):  # unacked entries are [message, exchange, routing_key]
            message = message[0]
        return str(message["headers"]["id"])
    except (ValueError, KeyError, TypeError, IndexError):
        return None


def delivery_ids(queues: Iterable[str], scan_limit: int) -> set[str] | None:
    """Delivery ids of every message waiting in `queues` or prefetched by a worker.

    None when the broker holds more than `scan_limit` messages there: too many to read on each
    pass, so the caller must not conclude that anything is missing.
    """
    r = get_redis()
    lists = [key for queue in queues for key in redis_keys.queue_lists(queue)]
    unacked = redis_keys.unacked()
    pipe = r.pipeline(transaction=False)
    for key in lists:
        pipe.llen(key)
    pipe.hlen(unacked)
    if sum(pipe.execute()) > scan_limit:
        return None
    found: set[str] = set()
    for key in lists:
        found.update(d for raw in r.lrange(key, 0, -1) if (d := _delivery_id(raw)))
    found.update(d for raw in r.hvals(unacked) if (d := _delivery_id(raw)))
    return found
