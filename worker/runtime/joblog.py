"""Worker and beat logging: medic's format (MEDIC_LOG_FORMAT) on the handlers Celery sets up,
and each job's fields (job_id, delivery_id, tenant, queue, worker) on every line logged while it runs.

Celery configures the root logger itself and then sends `after_setup_logger`: medic re-formats
those handlers instead of replacing Celery's setup, so `--loglevel` and log files still work.
The job fields come from `task_prerun`: the message carries job_id and delivery_id as its args
and the tenant as a header (worker/broker/publish.py); the queue is its routing key.
"""

from __future__ import annotations

import logging
from typing import Any

from worker import logs
from worker.broker.messages import TENANT_HEADER, queue_of
from worker.settings import get_settings


def on_setup_logger(logger: logging.Logger, **_: Any) -> None:
    """after_setup_logger / after_setup_task_logger: medic's format on Celery's handlers."""
    s = get_settings()
    for handler in logger.handlers:
        logs.apply(handler, s.log_format)
    logs.quiet(s.log_quiet)


def on_task_prerun(task: Any = None, args: Any = None, **_: Any) -> None:
    request = getattr(task, "request", None)
    name = str(getattr(task, "name", ""))
    if name.startswith("medic.control."):
        logs.set_job(loop=name.rsplit(".", 1)[1])
        return
    if request is None or not args or len(args) != 2:
        return
    tenant = getattr(request, TENANT_HEADER, None)  # a message header becomes an attribute of the request
    queue = queue_of(request.delivery_info)
    logs.set_job(job_id=args[0], delivery_id=args[1], tenant=tenant, queue=queue, worker=request.hostname)


def on_task_postrun(**_: Any) -> None:
    logs.set_job()
