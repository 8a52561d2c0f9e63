"""Jobs used only by the tests. Each execution is recorded in Redis so tests can prove how many
times a job really ran, and that no two executions of one job overlapped.

Records go to `MEDIC_TEST_RECORD_REDIS_URL` (the shared Redis), not to the broker's Redis, so a
chaos test that restarts the broker keeps them."""

from __future__ import annotations

import itertools
import json
import os
import time

import redis

from worker.runtime.registry import job
from worker.settings import get_settings

_clients: dict[tuple[int, str], redis.Redis[str]] = {}


def get_redis() -> redis.Redis[str]:
    url = os.environ.get("MEDIC_TEST_RECORD_REDIS_URL") or get_settings().redis_url
    key = (os.getpid(), url)
    if key not in _clients:
        _clients[key] = redis.Redis.from_url(url, decode_responses=True)
    return _clients[key]


def _log_key(tag: str) -> str:
    return f"{get_settings().key_prefix}test:executions:{tag}"


def overlapping(runs: list[dict[str, float | int | str]]) -> bool:
    """True if two executions overlapped in time (an execution whose process died has end 0:
    it is taken to run until the next one started, which cannot be checked)."""
    spans = sorted((float(r["start"]), float(r["end"]) or float(r["start"])) for r in runs)
    return any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))


def executions(tag: str) -> list[dict[str, float | int | str]]:
    """Every recorded execution of `tag`: pid, start, end (end is 0 if the process died)."""
    entries = get_redis().hgetall(_log_key(tag))
    return sorted((json.loads(v) for v in entries.values()), key=lambda e: float(e["start"]))


@job("tests.record", backoff=0.1)
def record(tag: str, seconds: float = 0.0) -> dict[str, int]:
    """Sleep `seconds`; record the execution's start and end under `tag`."""
    r = get_redis()
    key = _log_key(tag)
    execution = f"{os.getpid()}:{time.time_ns()}"
    entry = {"pid": os.getpid(), "start": time.time(), "end": 0.0}
    r.hset(key, execution, json.dumps(entry))
    time.sleep(seconds)
    entry["end"] = time.time()
    r.hset(key, execution, json.dumps(entry))
    return {"pid": os.getpid()}


@job("tests.fail_then_succeed", backoff=0.1)
def fail_then_succeed(tag: str, failures: int) -> str:
    """Fail `failures` times, then succeed (the count lives in Redis, across processes)."""
    n = get_redis().incr(_log_key(tag) + ":count")
    if n <= failures:
        raise ValueError(f"failure {n} of {failures}")
    return f"succeeded on attempt {n}"


@job("tests.typed")
def typed(count: int, ratio: float = 1.0, labels: list[str] | None = None) -> int:
    return count
