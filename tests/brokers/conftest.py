"""Tests that medic works on both brokers: each test here runs once on Redis and once on
RabbitMQ (the package-scoped `broker` fixture), on a ledger of its module's own (the control
loops it runs scan every job)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.brokers.selected import KINDS, RABBITMQ, Broker, use_broker
from tests.conftest import own_ledger
from worker.testing.processes import Processes


@pytest.fixture(scope="package", params=KINDS)
def broker(request: pytest.FixtureRequest, medic_env: dict[str, str]) -> Iterator[Broker]:
    """This process and the processes of `bprocs` on Redis, then on RabbitMQ (a vhost of the
    run's own, quorum queues); the suite's settings are back at the end."""
    with use_broker(request.param, medic_env) as b:
        yield b


@pytest.fixture(scope="module")
def rabbit(request: pytest.FixtureRequest, medic_env: dict[str, str]) -> Iterator[Broker]:
    """RabbitMQ only, with the queue type the module names in QUEUE_TYPE (quorum by default), in
    a vhost of its own (a queue's type is fixed once declared), on a ledger of the module's own;
    `Broker.env` is that ledger's environment on it."""
    queue_type = getattr(request.module, "QUEUE_TYPE", "quorum")
    with use_broker(RABBITMQ, medic_env, queue_type=queue_type) as b, own_ledger(medic_env) as env:
        yield dataclasses.replace(b, env=b.with_env(env))


@pytest.fixture(scope="module")
def bledger(broker: Broker, medic_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """A ledger of this module's own per broker (`private_ledger` would be shared by both: the
    jobs one broker left queued are, to the other, lost messages), on the broker under test."""
    with own_ledger(medic_env) as env:
        yield broker.with_env(env)


@pytest.fixture
def bprocs(bledger: dict[str, str], tmp_path: Path) -> Iterator[Processes]:
    """Real processes on this module's ledger and the broker under test."""
    p = Processes(bledger, tmp_path)
    yield p
    p.stop_all()
