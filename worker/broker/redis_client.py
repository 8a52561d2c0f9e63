"""medic's own Redis client (presence, locks, admission); the broker has its own connections."""

from __future__ import annotations

import redis

from worker.forksafe import PerProcess
from worker.settings import get_settings


def _client_for(url: str) -> redis.Redis[str]:
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=2,
        socket_timeout=2,
        health_check_interval=10,
        decode_responses=True,
    )


_client: PerProcess[str, redis.Redis[str]] = PerProcess(_client_for, close=lambda client: client.close())


def get_redis() -> redis.Redis[str]:
    """A per-process client with short timeouts, so an outage fails fast instead of hanging."""
    return _client.get(get_settings().redis_url)


def eviction_risk() -> str | None:
    """A sentence when this Redis may evict keys (maxmemory-policy other than noeviction): it would
    silently drop queued messages, locks and presence. Reconcile re-sends lost jobs, but that must
    not be the normal path. None when safe or when Redis cannot be asked."""
    try:
        policy = str(get_redis().info("memory").get("maxmemory_policy", "noeviction"))
    except redis.RedisError:
        return None
    if policy == "noeviction":
        return None
    return (
        f"Redis maxmemory-policy is {policy!r}: under memory pressure it evicts queued messages, "
        "locks and worker presence; set maxmemory-policy noeviction (medic's reconcile loop re-sends "
        "lost jobs, but that must not be the normal path)"
    )
