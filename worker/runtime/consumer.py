"""A worker's registration as the consumer of its queues, every heartbeat while it consumes.

Registered means ready: `medic up`'s banner waits for it, `medic health --role worker` and
MedicQueueUnconsumed read it (worker/broker/presence.py holds the keys). It runs in the main
process, which runs no job and so has no heartbeat of its own.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from worker.background import BackgroundThread
from worker.broker import presence
from worker.forksafe import PerProcess
from worker.runtime.worker_info import consumed_queues, is_test_worker
from worker.settings import get_settings

log = logging.getLogger(__name__)


class Registration:
    """This worker's entry in each of its queues' consumer sets, refreshed every heartbeat."""

    def __init__(self, hostname: str, queues: list[str]) -> None:
        self.hostname, self.queues = hostname, queues
        self.thread = BackgroundThread(
            "medic-consumer", self.register, every_s=get_settings().heartbeat_seconds, logger=log
        )
        self.thread.start()

    def register(self) -> None:
        presence.register_consumer(self.hostname, self.queues)

    def end(self) -> None:
        """Stop refreshing and leave the sets at once (the TTL would take a while)."""
        self.thread.stop()
        try:
            presence.unregister_consumer(self.hostname, self.queues)
        except Exception as exc:  # noqa: BLE001 - Redis down: the entry lapses with its TTL
            log.warning("consumer unregistration failed: %s", exc)


_registration: PerProcess[tuple[str, tuple[str, ...]], Registration] = PerProcess(
    lambda key: Registration(key[0], list(key[1])), close=Registration.end
)


def on_worker_ready(sender: Any, **_: Any) -> None:
    """Register once the worker consumes (sender: its consumer); one registration however often
    the consumer becomes ready again (a broker reconnect)."""
    if is_test_worker(sender):
        return
    hostname = sender.hostname or socket.gethostname()
    _registration.get((hostname, tuple(consumed_queues(sender.app))))


def on_worker_shutdown(**_: Any) -> None:
    _registration.clear()  # ends the registration this process made
