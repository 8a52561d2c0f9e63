"""Issue 18, item 10: the known queues shrink. A queue with no new job for
MEDIC_QUEUE_FORGET_SECONDS whose lists are empty is forgotten by the prune loop (with its
counters and rates); one that still holds messages, or had a job lately, is kept; one that gets
a job again is known again. The loops are run with the clock moved forward (no waiting)."""

from __future__ import annotations

import datetime as dt
import uuid

from worker import enqueue
from worker.broker import counters, redis_keys
from worker.broker.redis_client import get_redis
from worker.clock import utcnow
from worker.control.prune import prune
from worker.settings import get_settings


def _empty(queue: str) -> None:
    """What a worker that took every message leaves: the queue's lists gone."""
    get_redis().delete(*redis_keys.queue_lists(queue))


def _later() -> dt.datetime:
    return utcnow() + dt.timedelta(seconds=get_settings().queue_forget_seconds + 60)


def test_an_idle_empty_queue_is_forgotten_by_prune(private_ledger: dict[str, str]) -> None:
    # Bug caught: the set never shrank (every queue ever used walked by every loop for ever).
    gone, waiting, busy = (f"q-known-{uuid.uuid4().hex[:6]}" for _ in range(3))
    for queue in (gone, waiting, busy):
        enqueue("examples.echo", {"message": "x"}, queue=queue)  # nobody consumes these
    _empty(gone)
    _empty(busy)
    assert {gone, waiting, busy} <= set(counters.known_queues())
    assert counters.read(gone) == (1, 0)

    counters.mark_active([busy], now=_later().timestamp())  # a job arrived lately (by the later clock)
    done = prune(_later())
    assert done["queues_forgotten"] >= 1, done
    known = set(counters.known_queues())
    assert gone not in known, "idle and empty: forgotten"
    assert waiting in known, "a message still waits in it: kept however idle"
    assert busy in known, "a job arrived lately: kept"
    assert counters.read(gone) == (0, 0), "its counters went with it"
    assert not get_redis().exists(redis_keys.rates(gone))

    enqueue("examples.echo", {"message": "back"}, queue=gone)
    assert gone in set(counters.known_queues()), "a new job makes it known again"


def test_an_arrival_keeps_a_queue_however_long_it_was_empty(private_ledger: dict[str, str]) -> None:
    queue = f"q-known-{uuid.uuid4().hex[:6]}"
    enqueue("examples.echo", {"message": "x"}, queue=queue)
    _empty(queue)
    assert counters.forget_idle(utcnow().timestamp(), get_settings().queue_forget_seconds) == []
    assert queue in set(counters.known_queues())


def test_the_plain_set_of_before_is_read_then_moved_over(private_ledger: dict[str, str]) -> None:
    """An upgrade: queues in the old plain set are still walked, counted as active when prune
    first moves them, and forgotten only a whole period later."""
    queue = f"q-known-{uuid.uuid4().hex[:6]}"
    get_redis().sadd(redis_keys.legacy_known_queues(), queue)
    assert queue in set(counters.known_queues())
    now = utcnow().timestamp()
    idle = get_settings().queue_forget_seconds
    assert queue not in counters.forget_idle(now, idle)
    assert not get_redis().exists(redis_keys.legacy_known_queues())
    assert queue in set(counters.known_queues())
    assert queue in counters.forget_idle(now + idle + 1, idle)
    assert queue not in set(counters.known_queues())
