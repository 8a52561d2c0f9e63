"""One broker selected for a stretch of the run, then the previous settings back: shared by the
`broker` fixtures of tests/brokers/ and tests/chaos/.

On RabbitMQ the run gets a vhost of its own (deleted at the end, with everything in it);
`MEDIC_BROKER_URL` names it in this process's environment and in the environment handed to the
real processes a test starts (`Broker.env`). On Redis `MEDIC_BROKER_URL` is set empty, so the
broker is MEDIC_REDIS_URL's Redis whatever the caller's environment said."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from worker.testing import rabbitmq

REDIS = "redis"
RABBITMQ = "rabbitmq"
KINDS = [REDIS, RABBITMQ]
# A vhost per run, named like the run's database; MEDIC_TEST_VHOST_PREFIX renames them.
VHOST_PREFIX = os.environ.get("MEDIC_TEST_VHOST_PREFIX", "medic_test_")


@dataclass(frozen=True)
class Broker:
    kind: str
    overrides: dict[str, str]  # what this broker sets in the environment
    vhost: str = ""
    queue_type: str = ""
    env: dict[str, str] = field(default_factory=dict)  # the whole environment for real processes

    @property
    def on_rabbitmq(self) -> bool:
        return self.kind == RABBITMQ

    def with_env(self, base: dict[str, str]) -> dict[str, str]:
        """`base` (a ledger's environment) on this broker."""
        return {**base, **self.overrides}


def apply(overrides: dict[str, str]) -> dict[str, str | None]:
    """Set `overrides` in os.environ and re-read the settings; returns what they replaced."""
    from worker.broker import celery_app
    from worker.broker import rabbitmq as broker_rabbitmq
    from worker.settings import reset_settings

    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    reset_settings()
    broker_rabbitmq.reset()
    celery_app.reconfigure()
    return saved


def restore(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    apply({})


@contextlib.contextmanager
def use_broker(kind: str, base_env: dict[str, str], queue_type: str = "quorum") -> Iterator[Broker]:
    """This process, and the processes started with `Broker.env`, on `kind` until the end."""
    vhost = ""
    if kind == RABBITMQ:
        vhost = f"{VHOST_PREFIX}{uuid.uuid4().hex[:10]}_{queue_type}"
        url = rabbitmq.add_vhost(vhost)
        overrides = {"MEDIC_BROKER_URL": url, "MEDIC_RABBITMQ_QUEUE_TYPE": queue_type}
    else:
        overrides = {"MEDIC_BROKER_URL": ""}
    saved = apply(overrides)
    try:
        yield Broker(kind, overrides, vhost, queue_type if vhost else "", {**base_env, **overrides})
    finally:
        restore(saved)
        if vhost:
            rabbitmq.delete_vhost(vhost)
