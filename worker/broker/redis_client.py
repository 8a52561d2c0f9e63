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
