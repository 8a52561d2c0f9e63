"""A Redis that may evict (maxmemory-policy other than noeviction) is named loudly at start by
the API and by every worker: it would silently drop queued messages."""

from __future__ import annotations

import redis

from worker.ops.stack import PrivateRedis
from worker.testing.processes import Processes, wait_for


def test_api_and_worker_say_at_start_that_this_redis_may_evict(procs: Processes, private_redis: PrivateRedis) -> None:
    redis.Redis.from_url(private_redis.url).config_set("maxmemory-policy", "allkeys-lru")
    env = {"MEDIC_REDIS_URL": private_redis.url}
    api, _ = procs.api("api-evicting", **env)
    worker = procs.worker("worker-evicting", queues="default", concurrency=1, **env)
    for proc in (api, worker):
        wait_for(lambda p=proc: "maxmemory-policy is 'allkeys-lru'" in p.log(), 20, 0.1, f"{proc.name} warns")


def test_nothing_is_said_when_redis_never_evicts(procs: Processes, private_redis: PrivateRedis) -> None:
    api, _ = procs.api("api-noeviction", MEDIC_REDIS_URL=private_redis.url)
    assert redis.Redis.from_url(private_redis.url).config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    assert "maxmemory-policy" not in api.log()
