"""Chaos tests: real processes, real signals, private servers. Each module has its own ledger
database and key prefixes (`private_ledger`), since the control loops scan every job."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.brokers.selected import KINDS, Broker, use_broker
from tests.ledger_view import job
from worker.accept import enqueue
from worker.ledger.records import Job
from worker.testing.processes import Processes, wait_for

pytestmark = pytest.mark.chaos


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/chaos/" in str(item.fspath):
            item.add_marker(pytest.mark.chaos)


@pytest.fixture(params=KINDS)
def broker(request: pytest.FixtureRequest, private_ledger: dict[str, str]) -> Iterator[Broker]:
    """A test that asks for it runs on Redis and on RabbitMQ (a vhost of the test's own: a
    queue's messages cannot outlive it into the next test); `cprocs` starts its processes there."""
    with use_broker(request.param, private_ledger) as b:
        yield b


@pytest.fixture
def cprocs(request: pytest.FixtureRequest, private_ledger: dict[str, str], tmp_path: Path) -> Iterator[Processes]:
    """Real processes on this module's ledger (and on the test's `broker`, if it asks for one)."""
    env = private_ledger
    if "broker" in request.fixturenames:
        env = request.getfixturevalue("broker").env
    p = Processes(env, tmp_path)
    yield p
    p.stop_all()


def submit(type_: str, args: dict[str, Any], **options: Any) -> uuid.UUID:
    return enqueue(type_, args, tenant="chaos", **options).job.id


def wait_job(job_id: uuid.UUID, states: set[str], timeout: float = 60) -> Job:
    return wait_for(lambda: (r := job(job_id)).state in states and r, timeout, 0.1, f"job {job_id} in {states}")


TERMINAL = {"succeeded", "dead", "cancelled"}
