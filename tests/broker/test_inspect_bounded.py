"""Looking for lost messages reads the broker in bounded chunks and stops once every candidate is found."""

from __future__ import annotations

import json
import uuid

import pytest

from worker.broker import inspect, redis_keys
from worker.broker.redis_client import get_redis

pytestmark = pytest.mark.usefixtures("private_ledger")

QUEUE = "inspect-q"


def _message(delivery_id: str) -> str:
    return json.dumps(_body(delivery_id))


def _body(delivery_id: str) -> dict[str, object]:
    return {"headers": {"id": delivery_id}, "body": ""}


@pytest.fixture
def long_queue() -> list[str]:
    """5,000 messages in the queue and 50 prefetched (unacked); the newest pushed last (kombu LPUSHes)."""
    r = get_redis()
    key = redis_keys.queue_lists(QUEUE)[0]
    ids = [str(uuid.uuid4()) for _ in range(5_000)]
    r.delete(key, redis_keys.unacked())
    pipe = r.pipeline(transaction=False)
    for i in range(0, len(ids), 500):
        pipe.lpush(key, *[_message(d) for d in ids[i : i + 500]])
    pipe.hset(redis_keys.unacked(), mapping={f"tag-{i}": json.dumps([_body(f"u-{i}"), "", QUEUE]) for i in range(50)})
    pipe.execute()
    return ids


def test_candidates_found_early_need_no_full_read(long_queue: list[str]) -> None:
    """The queue is longer than the scan limit; the candidates sit in its first chunk."""
    wanted = {long_queue[-1], long_queue[-7]}
    assert inspect.delivery_ids({QUEUE}, 1_000, wanted) == wanted


def test_a_candidate_in_the_unacked_hash_is_found(long_queue: list[str]) -> None:
    wanted = {long_queue[0], "u-17"}
    assert inspect.delivery_ids({QUEUE}, 10_000, wanted) == wanted


def test_a_missing_candidate_past_the_scan_limit_means_unknown(long_queue: list[str]) -> None:
    """None, never "missing": the caller must not re-send what it could not look for."""
    assert inspect.delivery_ids({QUEUE}, 1_000, {long_queue[-1], str(uuid.uuid4())}) is None


def test_a_missing_candidate_within_the_limit_is_reported_missing(long_queue: list[str]) -> None:
    lost = str(uuid.uuid4())
    assert inspect.delivery_ids({QUEUE}, 10_000, {long_queue[-1], lost}) == {long_queue[-1]}
