"""A pooled RabbitMQ connection that died while idle costs no publish: the batch goes again on a
new connection (worker/broker/rabbitmq.py `send`). Without that retry, every publish after a
RabbitMQ restart or a proxy's idle cut would be refused once and wait for reconcile."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest

from worker.broker import rabbitmq
from worker.broker.celery_app import reconfigure
from worker.broker.messages import Delivery
from worker.settings import reset_settings


def _ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def vhost(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"mt-reconnect-{uuid.uuid4().hex[:8]}"
    if _ctl("add_vhost", name).returncode != 0:
        pytest.skip("rabbitmqctl cannot add a vhost here")
    _ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    monkeypatch.setenv("MEDIC_BROKER_URL", f"amqp://guest:guest@127.0.0.1:5672/{name}")
    reset_settings()
    reconfigure()
    yield name
    rabbitmq.reset()
    monkeypatch.delenv("MEDIC_BROKER_URL")
    reset_settings()
    reconfigure()
    _ctl("delete_vhost", name)


def test_a_publish_after_the_broker_closed_the_pooled_connection_is_confirmed(vhost: str) -> None:
    delivery = Delivery("reconnect-q", 0, {"id": "d1"}, {}, b"{}", None)
    rabbitmq.send([delivery])
    assert rabbitmq.ready("reconnect-q")[0] == 1
    closed = _ctl("close_all_connections", "-p", vhost, "the test closes them")
    assert closed.returncode == 0, closed.stderr
    rabbitmq.send([delivery, delivery])  # raised ConnectionForced without the retry
    assert rabbitmq.ready("reconnect-q")[0] == 3, "both messages of the second batch are in the queue"
