"""medic's own Redis client (presence, locks, admission); the broker has its own connections."""

from __future__ import annotations

from typing import Any, NamedTuple
from urllib.parse import urlsplit

import redis
from redis.sentinel import Sentinel

from worker.forksafe import PerProcess
from worker.settings import Settings, get_settings, is_sentinel_url, sentinel_nodes

# Short timeouts, so an outage fails fast instead of hanging.
TIMEOUT_SECONDS = 2
HEALTH_CHECK_SECONDS = 10


class Target(NamedTuple):
    """Where the client connects: a URL, or Sentinels and the name of their master."""

    url: str
    master: str
    sentinel_password: str


def _client_for(target: Target) -> redis.Redis[str]:
    if not is_sentinel_url(target.url):
        return redis.Redis.from_url(
            target.url,
            socket_connect_timeout=TIMEOUT_SECONDS,
            socket_timeout=TIMEOUT_SECONDS,
            health_check_interval=HEALTH_CHECK_SECONDS,
            decode_responses=True,
        )
    return _master_for(target)


def _master_for(target: Target) -> redis.Redis[str]:
    """A client that asks the Sentinels for the master on every new connection and drops its
    connections when the master moves, so counters, presence and scripts follow a failover."""
    first = urlsplit(target.url.split(";", 1)[0])
    db = int(first.path.strip("/") or 0)
    sentinel = Sentinel(
        sentinel_nodes(target.url),
        sentinel_kwargs=sentinel_connection_options(target.sentinel_password),
        username=first.username,
        password=first.password,
        db=db,
        socket_connect_timeout=TIMEOUT_SECONDS,
        socket_timeout=TIMEOUT_SECONDS,
        health_check_interval=HEALTH_CHECK_SECONDS,
        decode_responses=True,
    )
    client: redis.Redis[str] = sentinel.master_for(target.master)
    return client


def sentinel_connection_options(password: str) -> dict[str, Any]:
    """Connection options of the Sentinels themselves: their password, and timeouts short enough
    that asking a dead Sentinel moves on to the next one quickly."""
    options: dict[str, Any] = {"socket_connect_timeout": 1, "socket_timeout": 1}
    if password:
        options["password"] = password
    return options


def _close(client: redis.Redis[str]) -> None:
    client.close()
    sentinel = getattr(client.connection_pool, "sentinel_manager", None)
    if sentinel is not None:
        sentinel.close()


_client: PerProcess[Target, redis.Redis[str]] = PerProcess(_client_for, close=_close)


def target(s: Settings) -> Target:
    return Target(s.redis_url, s.redis_sentinel_master, s.redis_sentinel_password)


def get_redis() -> redis.Redis[str]:
    """A per-process client with short timeouts; behind Sentinels, always the current master's."""
    return _client.get(target(get_settings()))


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
