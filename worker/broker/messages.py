"""The task message of one delivery, built here and sent straight to the broker.

What `app.send_task` would put on the broker, byte for byte in layout (tests/broker/
test_messages.py compares the two): Celery's own `as_task_v2` makes the headers and body, and
this module adds kombu's Redis envelope and picks the list kombu's `_put` would pick (on
RabbitMQ, worker/broker/rabbitmq.py wraps the same delivery in an AMQP message). Skipped:
send_task's routing, option merging and `maybe_declare` (a Queue copy and bind per message),
kombu's producer and channel, and `saferepr` of the arguments: per message, that work cost many
times the message itself (docs/benchmarks.md).

It holds because medic's deliveries are plain: one queue named by the routing key on the default
(anonymous) exchange, JSON, no compression, no result, no sent event (`task_send_sent_event` is
off). A publish setting that would change the message (a compression, another serializer, a
queue with a non-default exchange) must be made here too; the comparison test fails until it is.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from celery.utils.nodenames import anon_nodename

from worker.broker import redis_keys
from worker.broker.celery_app import app
from worker.clock import utcnow
from worker.settings import get_settings

TENANT_HEADER = "medic_tenant"
# A delivery delayed in RabbitMQ's delay levels arrives with its countdown's 28 bits in front of
# its queue's name in the routing key (worker/broker/rabbitmq.py).
_DELAY_BITS = re.compile(r"^(?:[01]\.){28}")


def queue_of(delivery_info: dict[str, Any] | None) -> str | None:
    """The queue a message was sent to, from the delivery info Celery hands the worker."""
    key = (delivery_info or {}).get("routing_key")
    return _DELAY_BITS.sub("", key, count=1) if isinstance(key, str) else None


def kombu_priority(priority: int) -> int:
    """medic priority (0..9, higher is more urgent) -> kombu's Redis priority (lower is served first)."""
    return 9 - max(0, min(9, priority))


@dataclass(frozen=True)
class Delivery:
    """One delivery of a job, as Celery's `as_task_v2` makes it, before a broker's envelope."""

    queue: str
    priority: int  # medic's: 0..9, higher is more urgent
    headers: dict[str, Any]
    properties: dict[str, Any]  # Celery's: correlation_id, reply_to
    body: bytes  # JSON
    eta: dt.datetime | None


def delivery(row: Any) -> Delivery:
    """The delivery of `row`: the message names the job and carries its fencing token
    (`delivery_id`, also the Celery task id)."""
    s = get_settings()
    job_id, task_id = str(row.id), str(row.delivery_id)
    args = [job_id, task_id]
    eta = row.not_before if row.not_before is not None and row.not_before > utcnow() else None
    message = app.amqp.as_task_v2(
        task_id,
        row.type,
        args=args,
        eta=eta,
        time_limit=row.timeout_s + s.timeout_grace_seconds,
        soft_time_limit=row.timeout_s,
        reply_to=app.thread_oid,
        origin=anon_nodename(),
        ignore_result=None,
        argsrepr=repr(args),
        kwargsrepr="{}",
    )
    headers = dict(message.headers)
    headers[TENANT_HEADER] = row.tenant  # for the worker's log lines about the job (runtime/joblog.py)
    body = json.dumps(message.body).encode()
    return Delivery(row.queue, row.priority, headers, dict(message.properties), body, eta)


def redis_message(d: Delivery) -> tuple[str, str]:
    """(Redis list, JSON message) of a delivery: kombu's Redis envelope, on the list its `_put`
    would pick for the priority."""
    prio = kombu_priority(d.priority)
    envelope = {
        "body": base64.b64encode(d.body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": d.headers,
        "properties": {
            **d.properties,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": d.queue},
            "priority": prio,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return redis_keys.queue_list_for(d.queue, prio), json.dumps(envelope)


def delivery_message(row: Any) -> tuple[str, str]:
    """(Redis list, JSON message) of a delivery of `row`."""
    return redis_message(delivery(row))
