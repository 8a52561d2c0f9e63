"""The Celery app. Configured on first use from the settings, never at import time.

The control tasks (and with them the beat schedule) are named in `imports` by module path: every
worker and beat imports them at start, and an error there stops that process loudly. The loader is
named by path the same way: when a worker or beat starts, it installs medic's signal handlers
(worker/runtime/signals.py, and the control plane's in worker/control/wiring.py), which live in
layers above this one.
"""

from __future__ import annotations

from typing import Any

import kombu.pools
from celery import Celery

from worker.broker import kombu_fixes
from worker.broker.redis_client import sentinel_connection_options
from worker.settings import Settings, get_settings, is_sentinel_url

CONTROL_QUEUE = "medic.control"
CONTROL_TASKS = "worker.control.tasks"
CONTROL_TASK_PREFIX = "medic.control."
WORKER_LOADER = "worker.control.wiring:ControlLoader"

kombu_fixes.install()
app = Celery("medic", loader=WORKER_LOADER)


class QuietControlTasks:
    """`task_annotations`: the control loops never send task events, so Flower (which switches
    task events on remotely while it runs) lists application jobs, not a loop run every 2 s.

    A task class's `send_events = False` is honoured even while events are switched on
    (celery/worker/request.py `send_event`); annotations set it when the task is bound."""

    def annotate(self, task: Any) -> dict[str, Any] | None:
        return {"send_events": False} if str(task.name).startswith(CONTROL_TASK_PREFIX) else None


def celery_config(s: Settings) -> dict[str, Any]:
    """Celery settings that the ledger's guarantees rely on."""
    return {
        "broker_url": s.broker,
        **(rabbitmq_config(s) if s.on_rabbitmq else redis_config(s)),
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "broker_connection_timeout": 2.0,
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure": True,
        "task_acks_on_timeout": True,
        "worker_prefetch_multiplier": 1,
        # Off by default: task events are a large share of a worker main process's CPU
        # (docs/benchmarks.md, events on vs off).
        # Flower switches them on remotely (enable_events every 5 s) while it watches.
        "worker_send_task_events": False,
        "task_annotations": [QuietControlTasks()],
        # The ledger records "enqueued"; a task-sent event would be a second Redis publish per job.
        "task_send_sent_event": False,
        "task_default_queue": s.default_queue,
        "task_create_missing_queues": True,
        # Fail fast when Redis is down: the ledger keeps the job, reconcile publishes it later.
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        "imports": [CONTROL_TASKS, *s.job_modules],
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
    }


def redis_config(s: Settings) -> dict[str, Any]:
    """kombu's Redis transport as medic needs it."""
    transport: dict[str, Any] = {
        # The ledger's leases find lost jobs in seconds; kombu's own redelivery of unacked
        # messages would only duplicate long-running jobs (the claim drops such copies).
        "visibility_timeout": 12 * 3600,
    }
    if s.broker_key_prefix:
        transport["global_keyprefix"] = s.broker_key_prefix
    transport.update(sentinel_options(s))
    return {"broker_transport_options": transport, **AMQP_DEFAULTS}


AMQP_DEFAULTS: dict[str, Any] = {  # Celery's own, restored when the broker changes back to Redis
    "task_default_queue_type": "classic",
    "task_create_missing_queue_type": "classic",
    "task_queue_max_priority": None,
    "broker_native_delayed_delivery_queue_type": "quorum",
}


def rabbitmq_config(s: Settings) -> dict[str, Any]:
    """RabbitMQ: every queue durable and of the configured type, declared alike by the workers
    and by medic's publisher (worker/broker/rabbitmq.py; a mismatch closes the channel), and
    Celery's own publishes (the control tasks) confirmed too."""
    quorum = s.rabbitmq_queue_type == "quorum"
    return {
        "broker_transport_options": {"confirm_publish": True},
        "task_default_queue_type": s.rabbitmq_queue_type,
        "task_create_missing_queue_type": s.rabbitmq_queue_type,
        # quorum queues refuse x-max-priority before RabbitMQ 4; classic ones order by it
        "task_queue_max_priority": None if quorum else 9,
        "broker_native_delayed_delivery_queue_type": s.rabbitmq_queue_type,
    }


def sentinel_options(s: Settings) -> dict[str, Any]:
    """kombu's sentinel transport (a `sentinel://` broker URL) asks the Sentinels for this master;
    the URL's own password is the master's, `sentinel_kwargs` are the Sentinel connections' own
    (short timeouts: discovery moves on to the next Sentinel)."""
    if not is_sentinel_url(s.redis_url):
        return {}
    return {
        "master_name": s.redis_sentinel_master,
        "sentinel_kwargs": sentinel_connection_options(s.redis_sentinel_password),
    }


@app.on_configure.connect
def _configure(sender: Celery, **_: Any) -> None:
    sender.conf.update(celery_config(get_settings()))


def reconfigure() -> None:
    """Apply changed settings to an app that was already configured (tests, the CLI)."""
    if app.configured:
        _configure(app)
        if app._pool is not None:
            app._pool.force_close_all()
        # Drop the closed pools as Celery does after a fork, and kombu's global producer pools
        # (keyed by connection, they would hand out the closed one), so the next publish opens
        # new connections to the (possibly new) broker URL.
        app._after_fork()
        for made_from_settings in ("queues", "default_queue", "router"):
            app.amqp.__dict__.pop(made_from_settings, None)
        kombu.pools.reset()  # type: ignore[no-untyped-call]
