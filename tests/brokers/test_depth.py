"""What the broker holds, read the same way on both brokers: a message the broker lost is found
and re-sent by reconcile, and admission counts the messages the broker holds (on RabbitMQ a
passive declare, not Redis lists). No worker consumes these queues."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest
from kombu import Connection

from api.errors import status_for
from tests.brokers.selected import Broker
from tests.conftest import switched_env
from tests.ledger_view import job, reasons
from worker.accept import JobRequest, enqueue, enqueue_many
from worker.broker import inspect, redis_keys
from worker.broker.redis_client import get_redis
from worker.clock import utcnow
from worker.control import reconcile
from worker.errors import QueueFullError
from worker.settings import get_settings


def lose(broker: Broker, queue: str) -> None:
    """The broker loses every message waiting in `queue` (RabbitMQ: a purge; Redis: its lists deleted)."""
    if broker.on_rabbitmq:
        with Connection(get_settings().broker) as conn:
            conn.default_channel.queue_purge(queue)
    else:
        get_redis().delete(*redis_keys.queue_lists(queue))


def waiting_ids(broker: Broker, queue: str) -> set[str]:
    """Delivery ids of the messages waiting in `queue` (RabbitMQ: taken off it with basic_get)."""
    if not broker.on_rabbitmq:
        return inspect.delivery_ids([queue], 10_000) or set()
    ids = set()
    with Connection(get_settings().broker) as conn:
        while (message := conn.default_channel.basic_get(queue, no_ack=True)) is not None:
            ids.add(str(message.headers["id"]))
    return ids


def test_a_lost_message_is_found_and_resent_by_reconcile(broker: Broker, bledger: dict[str, str]) -> None:
    """Given a queued job whose message the broker then loses, When reconcile_broker runs past
    MEDIC_LOST_AFTER_SECONDS, Then it finds the message gone and re-sends the job under a fresh
    delivery id, which is what the queue then holds."""
    # Bug caught: `inspect.lost` deciding nothing on RabbitMQ (a queue it cannot browse), so the
    # job waits forever; a re-send under the old delivery id.
    queue = f"q-lost-{uuid.uuid4().hex[:8]}"
    first = enqueue("examples.echo", {"message": "lost"}, queue=queue, tenant="brk").job
    assert inspect.depth(queue) == 1
    lose(broker, queue)
    assert inspect.depth(queue) == 0

    later = utcnow() + dt.timedelta(seconds=get_settings().lost_after_seconds + 1)
    assert reconcile.lost_messages(later, 100) == 1
    again = job(first.id)
    assert again.state == "queued" and again.delivery_id != first.delivery_id
    assert reasons(first.id).count("message_lost") == 1
    assert waiting_ids(broker, queue) == {str(again.delivery_id)}


def test_a_queue_still_holding_its_message_is_not_resent(broker: Broker, bledger: dict[str, str]) -> None:
    """Given a queued job whose message waits in its queue, When reconcile_broker runs past
    MEDIC_LOST_AFTER_SECONDS, Then nothing is re-sent (its queue is not drained: on RabbitMQ
    undecided, on Redis the message found)."""
    # Bug caught: every old queued job taken for lost (its queue doubling at each pass).
    queue = f"q-kept-{uuid.uuid4().hex[:8]}"
    kept = enqueue("examples.echo", {"message": "kept"}, queue=queue, tenant="brk").job
    later = utcnow() + dt.timedelta(seconds=get_settings().lost_after_seconds + 1)
    assert reconcile.lost_messages(later, 100) == 0
    assert job(kept.id).delivery_id == kept.delivery_id
    assert inspect.depth(queue) == 1


def test_admission_counts_what_the_broker_holds(broker: Broker, bledger: dict[str, str]) -> None:
    """Given a queue with a high watermark of 3 holding 3 messages (sent past admission),
    When one more job is enqueued, Then it is refused (QueueFullError, the API's 429); once the
    broker no longer holds them, the same job is admitted."""
    # Bug caught: the broker's depth left out of the gate on RabbitMQ (its messages are not in
    # Redis lists), so a queue grows past its watermark unrefused.
    queue = f"gate-brk-{uuid.uuid4().hex[:8]}"
    with switched_env({"MEDIC_QUEUE_WATERMARKS": json.dumps({queue: [3, 1]})}):
        requests = [JobRequest("examples.echo", {"message": str(i)}, queue=queue) for i in range(3)]
        enqueue_many(requests, tenant="brk", admission=False)
        assert inspect.depth(queue) == 3
        with pytest.raises(QueueFullError) as refused:
            enqueue("examples.echo", {"message": "one too many"}, queue=queue, tenant="brk")
        assert status_for(refused.value) == 429
        lose(broker, queue)
        enqueue("examples.echo", {"message": "room again"}, queue=queue, tenant="brk")
