"""RabbitMQ only, classic queues (MEDIC_RABBITMQ_QUEUE_TYPE=classic): declared with
x-max-priority 9 as Celery's workers declare them, and their priorities honoured."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

from tests.brokers import amqp_view
from tests.brokers.selected import Broker
from worker.accept import JobRequest, enqueue, enqueue_many

QUEUE_TYPE = "classic"


def test_classic_queues_carry_priorities_and_a_worker_starts_on_them(rabbit: Broker, tmp_path: Path) -> None:
    """Given a classic queue medic declared by publishing to it first, When a real worker starts
    on it, Then the queue is durable with x-max-priority 9, the worker starts without
    PRECONDITION_FAILED, and runs the job."""
    # Bug caught: the x-max-priority argument left out (or another value) on one side: the
    # second declare fails with PRECONDITION_FAILED, or priorities are ignored.
    queue = f"q-classic-{uuid.uuid4().hex[:8]}"
    job_id = enqueue("examples.echo", {"message": "declared"}, queue=queue, tenant="brk").job.id
    declared = amqp_view.queues(rabbit.vhost)[queue]
    assert (declared["type"], declared["durable"]) == (QUEUE_TYPE, True), declared
    assert declared["arguments"] == {"x-max-priority": 9}, declared  # classic is the default type
    amqp_view.assert_a_worker_runs_it(rabbit.env, tmp_path, queue, job_id, "classic")


def test_priorities_order_a_classic_queue(rabbit: Broker) -> None:
    """Given jobs of priorities 0..9 enqueued in a shuffled order, When their messages are taken
    off the queue, Then the most urgent (medic's 9) comes first, in priority order."""
    # Bug caught: Redis's inverted priority (kombu's 9 - p) sent to RabbitMQ, which serves the
    # highest number first: the least urgent job would come first.
    queue = f"q-prio-{uuid.uuid4().hex[:8]}"
    priorities = list(range(10))
    random.Random(7).shuffle(priorities)
    requests = [JobRequest("examples.echo", {"message": str(p)}, queue=queue, priority=p) for p in priorities]
    done = enqueue_many(requests, tenant="brk")
    priority_of = {str(d.job.delivery_id): d.job.priority for d in done}
    taken = [priority_of[m.headers["id"]] for m in amqp_view.take(queue)]
    assert taken == sorted(priorities, reverse=True)
