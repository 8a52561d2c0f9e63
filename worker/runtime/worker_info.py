"""What the worker signal handlers ask of the Celery worker that sent them."""

from __future__ import annotations

from typing import Any

from celery import Celery

from worker.settings import get_settings


def consumed_queues(app: Celery) -> list[str]:
    """The queues this worker consumes (`-Q`), or the default queue when it names none."""
    return sorted(app.amqp.queues.consume_from or [get_settings().default_queue])


def is_test_worker(sender: Any) -> bool:
    """An embedded test worker (celery.contrib.testing) shares the test process: the handlers that
    set up a process (metrics, a scrape port, a registration) leave it alone. `sender` is the
    WorkController (worker_init) or its consumer (worker_ready)."""
    controller = getattr(sender, "controller", sender)
    return type(controller).__name__ == "TestWorkController"
