"""A fix for kombu's Redis transport that keeps a worker alive through a broker outage.

When the broker connection drops while a worker holds unacknowledged messages (every running job:
`acks_late`), Celery closes the connection (`on_connection_error_after_connected`) and kombu's
channel close restores the unacked messages. If the connection object was already released, the
restore asks for connection parameters of a client that is `None` and raises `AttributeError`,
which `kombu.common.ignore_errors` does not swallow: Celery logs "Unrecoverable error" and the
worker EXITS (seen in the nemesis suite at every Redis restart that outlasted a reconnect try,
kombu 5.7). Raised as a connection error instead, the close is ignored as Celery intends and the
consumer reconnects. Nothing is lost by skipping that restore: the ledger, not the unacked hash,
decides what runs again (a running job keeps its lease; a queued one is re-sent by reconcile).
"""

from __future__ import annotations

from typing import Any

import redis.exceptions
from kombu.transport import redis as kombu_redis

_original_connparams: Any = kombu_redis.Channel._connparams


def _connparams(self: Any, asynchronous: bool = False) -> Any:
    if self.connection is None or self.connection.client is None:
        raise redis.exceptions.ConnectionError("the broker connection was already closed")
    return _original_connparams(self, asynchronous)


def install() -> None:
    """Patch once (idempotent): import-time of the Celery app module."""
    if kombu_redis.Channel._connparams is not _connparams:
        kombu_redis.Channel._connparams = _connparams  # type: ignore[method-assign]
