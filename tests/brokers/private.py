"""A broker server of one test module's own, to take down, crash (SIGKILL) and bring back: a
private redis-server (no persistence: a crash loses every message) or a private RabbitMQ node
(durable quorum queues: what it confirmed survives)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from tests.brokers.selected import Broker
from tests.conftest import switched_env
from worker.ops.stack import PrivateRedis
from worker.testing.rabbitmq import PrivateRabbit


@dataclass
class PrivateBroker:
    kind: str
    server: PrivateRedis | PrivateRabbit
    overrides: dict[str, str]  # this process and the test's processes on it
    env: dict[str, str]

    def crash(self) -> None:
        """SIGKILL the server: no clean shutdown."""
        if isinstance(self.server, PrivateRabbit):
            self.server.crash()
        elif self.server.proc is not None:
            self.server.proc.kill()
            self.server.proc.wait(timeout=10)

    def start(self) -> None:
        self.server.start()


@contextlib.contextmanager
def private_broker(broker: Broker, ledger_env: dict[str, str]) -> Iterator[PrivateBroker]:
    """A private server of `broker`'s kind, started, with this process switched to it. On Redis it
    is also medic's own Redis (admission, counters, presence), as in a one-Redis deployment; on
    RabbitMQ those stay on the shared Redis. Test records (tests/testjobs.py) stay on the shared
    Redis either way: they must outlive the crash."""
    server: PrivateRedis | PrivateRabbit
    if broker.on_rabbitmq:
        server = PrivateRabbit()
        server.start()
        overrides = {"MEDIC_BROKER_URL": server.url, "MEDIC_RABBITMQ_QUEUE_TYPE": "quorum"}
    else:
        server = PrivateRedis()
        server.start()
        overrides = {"MEDIC_BROKER_URL": "", "MEDIC_REDIS_URL": server.url}
    try:
        with switched_env(overrides):
            yield PrivateBroker(broker.kind, server, overrides, {**ledger_env, **overrides})
    finally:
        if isinstance(server, PrivateRabbit):
            server.destroy()
        else:
            server.stop()
