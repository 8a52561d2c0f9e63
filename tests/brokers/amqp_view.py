"""What a RabbitMQ vhost holds, read from outside medic: its queues as `rabbitmqctl` lists them,
and the messages of a queue taken off it with basic_get."""

from __future__ import annotations

import json
from typing import Any

from kombu import Connection

from worker.settings import get_settings
from worker.testing import rabbitmq


def queues(vhost: str) -> dict[str, dict[str, Any]]:
    """Each queue of `vhost` by name: type, durable, arguments, messages."""
    out = rabbitmq.rabbitmqctl(
        "list_queues", "-p", vhost, "name", "type", "durable", "arguments", "messages", "--formatter", "json"
    ).stdout
    listed = json.loads(out)
    for q in listed:  # [[name, AMQP type, value], ...] -> {name: value}
        q["arguments"] = {name: value for name, _, value in q["arguments"]}
    return {q["name"]: q for q in listed}


def take(queue: str) -> list[Any]:
    """Every message waiting in `queue`, in the order the broker hands them out (taken off it)."""
    taken = []
    with Connection(get_settings().broker) as conn:
        while (message := conn.default_channel.basic_get(queue, no_ack=True)) is not None:
            taken.append(message)
    return taken
