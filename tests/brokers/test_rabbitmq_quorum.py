"""RabbitMQ only, quorum queues (the default): medic's AMQP message is Celery's own, field by
field; its queues are declared durable and quorum, so a worker starting on them does not fail;
a publish no queue takes is refused, not lost; a delay under a second is not held a whole
second in the delay levels."""

from __future__ import annotations

import datetime as dt
import types
import uuid
from typing import Any

import pytest
from kombu.transport import native_delayed_delivery as delayed

from tests.brokers import amqp_view
from tests.brokers.selected import Broker
from tests.ledger_view import job
from worker.accept import enqueue
from worker.broker import inspect, messages, rabbitmq
from worker.broker.celery_app import app
from worker.clock import utcnow
from worker.control import reconcile
from worker.settings import get_settings
from worker.testing.processes import wait_for

QUEUE_TYPE = "quorum"
X_DEATH = ("x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason")


def _row(queue: str, priority: int, not_before: dt.datetime | None) -> Any:
    return types.SimpleNamespace(
        id=uuid.uuid4(), delivery_id=uuid.uuid4(), type="examples.echo", queue=queue,
        priority=priority, timeout_s=60, tenant="acme", not_before=not_before,
    )  # fmt: skip


def send_task(row: Any) -> None:
    """`row`'s delivery as Celery's own `app.send_task` publishes it on RabbitMQ (the priority
    as is: on AMQP a higher number is more urgent, as in medic)."""
    s = get_settings()
    app.send_task(
        row.type,
        args=[str(row.id), str(row.delivery_id)],
        task_id=str(row.delivery_id),
        queue=row.queue,
        priority=row.priority,
        soft_time_limit=row.timeout_s,
        time_limit=row.timeout_s + s.timeout_grace_seconds,
        headers={messages.TENANT_HEADER: row.tenant},
        eta=row.not_before,
    )


@pytest.mark.parametrize(
    ("priority", "eta_s"), [(0, None), (5, None), (9, None), (3, 1.2)], ids=["p0", "p5", "p9", "eta"]
)
def test_a_published_message_is_what_send_task_publishes(rabbit: Broker, priority: int, eta_s: float | None) -> None:
    """Given one delivery, When medic publishes it and `app.send_task` sends the same delivery,
    Then the two messages taken off the queue carry the same headers, properties and body
    (medic's delayed one arrives through the delay levels, which add only RabbitMQ's x-death
    headers)."""
    # Bugs caught: a header, property or body field missing or different (a worker would see other
    # time limits, no tenant, a lost eta, another task id); Redis's inverted priority on AMQP;
    # a message not persistent.
    queue = f"q-amqp-{uuid.uuid4().hex[:8]}"
    not_before = utcnow() + dt.timedelta(seconds=eta_s) if eta_s else None
    row = _row(queue, priority, not_before)
    rabbitmq.send([messages.delivery(row)])
    if eta_s:
        wait_for(lambda: inspect.depth(queue) == 1, 10, 0.05, "medic's delayed message in its queue")
    send_task(row)
    wait_for(lambda: inspect.depth(queue) == 2, 10, 0.05, "both messages in the queue")
    ours, celerys = amqp_view.take(queue)
    for message in (ours, celerys):
        for header in X_DEATH:
            message.properties["application_headers"].pop(header, None)
    assert ours.properties == celerys.properties
    assert ours.body == celerys.body
    assert ours.properties["delivery_mode"] == 2 and ours.properties["priority"] == priority
    assert ours.headers["id"] == str(row.delivery_id)


def test_queues_are_declared_durable_quorum_and_a_worker_starts_on_them(rabbit: Broker, tmp_path: Any) -> None:
    """Given a queue medic declared by publishing to it first (and kombu's delay levels with it),
    When a real worker starts on that queue, Then the queue is durable and quorum, the worker
    starts without PRECONDITION_FAILED, and runs the job."""
    # Bug caught: medic declaring a queue with other arguments than Celery's workers (a classic
    # queue, another x-queue-type or x-max-priority): the worker's declare closes its channel.
    queue = f"q-decl-{uuid.uuid4().hex[:8]}"
    job_id = enqueue("examples.echo", {"message": "declared"}, queue=queue, tenant="brk").job.id
    declared = amqp_view.queues(rabbit.vhost)
    assert (declared[queue]["type"], declared[queue]["durable"]) == (QUEUE_TYPE, True), declared[queue]
    assert declared[queue]["arguments"] == {"x-queue-type": QUEUE_TYPE}, declared[queue]
    assert declared[delayed.level_name(0)]["type"] == QUEUE_TYPE
    amqp_view.assert_a_worker_runs_it(rabbit.env, tmp_path, queue, job_id, "decl")


def test_a_publish_no_queue_takes_is_refused_and_resent(rabbit: Broker) -> None:
    """Given a queue medic declared and that an operator then deleted (the publisher still takes
    it for declared), When a job is enqueued on it, Then the broker returns the message and the
    job is marked unpublished (202 all the same: the outbox); reconcile then re-sends it,
    declaring the queue again, and the queue holds it."""
    # Bug caught: `mandatory` off or the return ignored: the message silently dropped while the
    # ledger says published, and no loop would ever look for it before MEDIC_LOST_AFTER_SECONDS.
    queue = f"q-gone-{uuid.uuid4().hex[:8]}"
    enqueue("examples.echo", {"message": "declares"}, queue=queue, tenant="brk")
    with rabbitmq.pool().publisher() as pub:  # the idle publisher that declared it
        assert queue in pub.declared
        pub.channel.queue_delete(queue)
    refused = enqueue("examples.echo", {"message": "returned"}, queue=queue, tenant="brk").job
    assert job(refused.id).published_at is None, "a returned message taken for published"
    assert reconcile.never_published(utcnow(), 100) == 1
    assert job(refused.id).published_at is not None
    assert [m.headers["id"] for m in amqp_view.take(queue)] == [str(job(refused.id).delivery_id)]


def test_a_delay_under_a_second_goes_straight_to_its_queue() -> None:
    """A delivery due in under a second is routed to its queue (the worker holds it that long),
    not rounded up to the delay levels' one second; one due in 1.5 s waits 2 (never early)."""
    # Bug caught: every future ETA rounded up to a whole second in the delay levels, so a 0.2 s
    # back-off waited 1 s.
    now = utcnow()
    soon = messages.Delivery("q", 0, {}, {}, b"[]", now + dt.timedelta(seconds=0.2))
    later = messages.Delivery("q", 0, {}, {}, b"[]", now + dt.timedelta(seconds=1.5))
    assert rabbitmq.route(soon, now) == ("", "q")
    assert rabbitmq.route(later, now) == (delayed.level_name(27), delayed.calculate_routing_key(2, "q"))
