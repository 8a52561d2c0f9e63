"""medic's own Redis client (presence, locks, admission); the broker has its own connections."""

from __future__ import annotations

import os
import threading

import redis

from worker.settings import get_settings

_lock = threading.Lock()


def _reset_after_fork() -> None:
    # A thread of the parent may hold the lock at the moment of fork(); the child would wait forever.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)
_client: redis.Redis[str] | None = None
_client_key: tuple[int, str] | None = None


def get_redis() -> redis.Redis[str]:
    """A per-process client with short timeouts, so an outage fails fast instead of hanging."""
    global _client, _client_key
    url = get_settings().redis_url
    key = (os.getpid(), url)
    with _lock:
        if _client is None or _client_key != key:
            _client = redis.Redis.from_url(
                url,
                socket_connect_timeout=2,
                socket_timeout=2,
                health_check_interval=10,
                decode_responses=True,
            )
            _client_key = key
        return _client
