"""What the broker holds: read straight from Redis with kombu's key layout (see `redis_keys`), or
on RabbitMQ what a passive declare tells (worker/broker/rabbitmq.py). RabbitMQ cannot be browsed
without taking messages off their queues, so there a lost message is found only once its queue
has no message ready (`lost`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterable, Mapping

import amqp.exceptions
import redis
from kombu.exceptions import KombuError

from worker.broker import rabbitmq, redis_keys
from worker.broker.redis_client import get_redis
from worker.settings import get_settings

log = logging.getLogger(__name__)

# Every way a read of the broker (or of Redis beside it) can fail.
READ_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, amqp.exceptions.AMQPError, KombuError, OSError)
SCAN_CHUNK = 1000  # messages per LRANGE / HSCAN round trip while looking for delivery ids


def depth(queue: str) -> int:
    """Messages waiting in `queue` (all priorities): four LLENs in one round trip, or on RabbitMQ
    its ready messages (not those delivered to a worker and unacked, which Redis does not count
    either)."""
    if get_settings().on_rabbitmq:
        return rabbitmq.ready(queue)[0]
    pipe = get_redis().pipeline(transaction=False)
    for key in redis_keys.queue_lists(queue):
        pipe.llen(key)
    return int(sum(pipe.execute()))


def lost(wanted: Mapping[str, Collection[str]], scan_limit: int) -> set[str] | None:
    """Of the delivery ids wanted in each queue, those the broker holds nowhere; None when it
    cannot tell (a scan past `scan_limit` on Redis).

    On RabbitMQ a queue is not browsable: a queue with no message ready has every wanted id of
    it lost (each was published before the caller's cutoff, and a message a worker took it
    claims within moments); a queue with messages ready decides none of its ids until it drains.
    """
    if get_settings().on_rabbitmq:
        missing: set[str] = set()
        for queue, ids in sorted(wanted.items()):
            ready = rabbitmq.ready(queue)[0]
            if ready:
                log.info("reconcile: %s holds %d messages; on RabbitMQ its lost ones are found once it drains",
                         queue, ready)  # fmt: skip
            else:
                missing.update(ids)
        return missing
    every = {d for ids in wanted.values() for d in ids}
    present = delivery_ids(wanted.keys(), scan_limit, every)
    return None if present is None else every - present


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


def delivery_ids(queues: Iterable[str], scan_limit: int, wanted: Collection[str] | None = None) -> set[str] | None:
    """Which of the `wanted` delivery ids wait in `queues` or are prefetched by a worker (all of
    the ids found there if `wanted` is None).

    Reads the lists in LRANGE chunks, then the `unacked` hash with HSCAN, and stops as soon as
    every wanted id is found, so a long queue costs little when nothing is lost. None when more
    than `scan_limit` messages had to be read without finding them all: the caller must not
    conclude that anything is missing.

    Races: kombu LPUSHes new messages at the head and BRPOPs from the tail. Reading by index from
    the head, a push only makes us read some messages twice and a pop never moves one we have
    not read yet, so a message that stays put is never missed. One popped before we reach it is
    in `unacked`, read after the lists.
    """
    r = get_redis()
    want = set(wanted) if wanted is not None else None
    found: set[str] = set()
    read = 0

    def done() -> bool:
        return want is not None and want <= found

    for key in (key for queue in queues for key in redis_keys.queue_lists(queue)):
        start = 0
        while not done():
            chunk = r.lrange(key, start, start + SCAN_CHUNK - 1)
            read += len(chunk)
            if read > scan_limit:
                return None
            found.update(d for raw in chunk if (d := _delivery_id(raw)))
            if len(chunk) < SCAN_CHUNK:
                break
            start += SCAN_CHUNK
    cursor = 0
    while not done():
        cursor, entries = r.hscan(redis_keys.unacked(), cursor, count=SCAN_CHUNK)
        read += len(entries)
        if read > scan_limit:
            return None
        found.update(d for raw in entries.values() if (d := _delivery_id(raw)))
        if cursor == 0:
            break
    return found if want is None else found & want
