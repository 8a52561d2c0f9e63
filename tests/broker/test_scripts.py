"""Lua scripts are files sent once: later calls send only their hash (EVALSHA)."""

from __future__ import annotations

import uuid

from worker.broker import redis_keys
from worker.broker.redis_client import get_redis
from worker.broker.scripts import run_script


def _calls(command: str) -> int:
    stats = get_redis().info("commandstats").get(f"cmdstat_{command}", {})
    return int(stats.get("calls", 0)) if isinstance(stats, dict) else 0


def test_release_lock_frees_only_the_owners_lock_and_runs_by_hash(medic_env: dict[str, str]) -> None:
    r = get_redis()
    lock = redis_keys.control_lock(f"test-{uuid.uuid4().hex[:6]}")
    r.set(lock, "owner", px=10_000)
    run_script("release_lock", [lock], ["owner"])  # loads the script if this Redis lacks it
    r.set(lock, "owner", px=10_000)
    evals, evalshas = _calls("eval"), _calls("evalsha")

    assert run_script("release_lock", [lock], ["someone-else"]) == 0
    assert r.get(lock) == "owner", "a run whose lock expired and was retaken must not free the new owner's lock"
    assert run_script("release_lock", [lock], ["owner"]) == 1
    assert r.get(lock) is None
    assert _calls("evalsha") >= evalshas + 2
    assert _calls("eval") == evals, "the script text must not be sent again once Redis has it"


def test_a_flushed_script_cache_is_reloaded(medic_env: dict[str, str]) -> None:
    """A Redis restart forgets every script: the next call must load it again, not fail."""
    lock = redis_keys.control_lock(f"test-{uuid.uuid4().hex[:6]}")
    get_redis().set(lock, "t", px=10_000)
    get_redis().script_flush()
    assert run_script("release_lock", [lock], ["t"]) == 1
