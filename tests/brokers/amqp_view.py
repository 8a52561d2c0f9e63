"""What a RabbitMQ vhost holds, read from outside medic: its queues as `rabbitmqctl` lists them,
and the messages of a queue taken off it with basic_get."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kombu import Connection

from tests.ledger_view import job
from worker.settings import get_settings
from worker.testing import rabbitmq
from worker.testing.processes import Processes, wait_for


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


def assert_a_worker_runs_it(env: dict[str, str], tmp_path: Path, queue: str, job_id: Any, name: str) -> None:
    """A real worker started on `queue`, which medic declared first, runs the job: its own
    declaration of the queue matches (else RabbitMQ closes its channel, PRECONDITION_FAILED)."""
    procs = Processes(env, tmp_path)
    try:
        w = procs.worker(name, queues=queue, concurrency=1)
        wait_for(lambda: job(job_id).state == "succeeded" or "PRECONDITION_FAILED" in w.log(), 30, 0.05, "the job")
        assert "PRECONDITION_FAILED" not in w.log(), w.log()[-3000:]
        assert job(job_id).state == "succeeded"
    finally:
        procs.stop_all()
