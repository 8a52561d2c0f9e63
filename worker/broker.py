"""What the broker holds, read straight from Redis with kombu's key layout.

kombu's Redis transport keeps queue `Q` in the list `Q` and its priority sub-queues in
`Q\\x06\\x163`, `Q\\x06\\x166`, `Q\\x06\\x169`; prefetched but unacknowledged messages in the hash
`unacked` (one for the whole DB). A `global_keyprefix` goes in front of every key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from worker.redis_client import get_redis
from worker.settings import get_settings

log = logging.getLogger(__name__)

PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)  # kombu's default steps; priority 0 lives in the plain list
UNACKED = "unacked"


def queue_keys(queue: str) -> list[str]:
    prefix = get_settings().broker_key_prefix
    return [prefix + queue] + [f"{prefix}{queue}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS]


def depth(queue: str) -> int:
    """Messages waiting in `queue` (all priorities): four LLENs in one round trip."""
    pipe = get_redis().pipeline(transaction=False)
    for key in queue_keys(queue):
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
    keys = [key for queue in queues for key in queue_keys(queue)]
    unacked_key = get_settings().broker_key_prefix + UNACKED
    pipe = r.pipeline(transaction=False)
    for key in keys:
        pipe.llen(key)
    pipe.hlen(unacked_key)
    if sum(pipe.execute()) > scan_limit:
        return None
    found: set[str] = set()
    for key in keys:
        found.update(d for raw in r.lrange(key, 0, -1) if (d := _delivery_id(raw)))
    found.update(d for raw in r.hvals(unacked_key) if (d := _delivery_id(raw)))
    return found
