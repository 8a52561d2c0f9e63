"""Log lines a machine can read and a person can follow: MEDIC_LOG_FORMAT=json|console.

Every line about a job carries its `job_id`, `delivery_id`, `queue`, `worker` (and `tenant` where
the process knows it), from API, worker and loops alike, so one job can be followed with grep:
the fields come from a context variable set around each job (`set_job`) or from a log call's
`extra`, and a filter puts them on every record. JSON lines carry them as keys; console lines add
them as `key=value` at the end.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys
from typing import Any

JOB_FIELDS = ("job_id", "delivery_id", "tenant", "queue", "worker")
EXTRA_FIELDS = ("route", "status", "duration_ms", "ledger_ms", "alert", "loop", "reason")
# INFO chatter of libraries: their warnings still show
NOISY = ("alembic", "kombu", "httpx", "httpcore", "amqp", "celery.utils.functional", "urllib3", "asyncio")
# with MEDIC_LOG_QUIET (medic up's console): a line per task received and done, per beat send
CHATTY = ("celery.worker.strategy", "celery.app.trace", "celery.beat", "celery.worker.control")

_job: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("medic_job", default=None)


def job_extra(row: Any = None, **fields: Any) -> dict[str, str]:
    """`extra=` for one line about a job a process acts on outside the job's own run (a control
    loop, a worker's main process): the job fields of `row` (a ledger row, or anything with its
    attributes), then `fields`, which win; None is left out."""
    base: dict[str, Any] = {}
    if row is not None:
        base = {k: getattr(row, "id" if k == "job_id" else k, None) for k in JOB_FIELDS}
    base.update(fields)
    return {k: str(v) for k, v in base.items() if v is not None}


def set_job(**fields: Any) -> None:
    """Name this job on every line logged until the next call (Celery's task_prerun; `set_job()` clears)."""
    _job.set({k: str(v) for k, v in fields.items() if v is not None} or None)


class JobFilter(logging.Filter):
    """Copies the current job's fields onto each record (an `extra` of the call wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_job.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: getattr(record, k) for k in (*JOB_FIELDS, *EXTRA_FIELDS) if getattr(record, k, None) is not None}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class ConsoleFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = _fields(record)
        return text + ("  " + " ".join(f"{k}={v}" for k, v in fields.items()) if fields else "")


def formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else ConsoleFormatter()


def apply(handler: logging.Handler, fmt: str) -> None:
    """Give one handler medic's format and the job filter (used on handlers Celery made)."""
    handler.setFormatter(formatter(fmt))
    if not any(isinstance(f, JobFilter) for f in handler.filters):
        handler.addFilter(JobFilter())


def setup(fmt: str, level: str = "INFO", *, chatty_off: bool = False) -> None:
    """The root logger to stderr in `fmt`; noisy libraries down to WARNING."""
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "medic", False)]
    handler = ours[0] if ours else logging.StreamHandler(sys.stderr)
    handler.medic = True  # type: ignore[attr-defined]
    apply(handler, fmt)
    if not ours:  # other handlers (a test runner's capture) stay
        root.addHandler(handler)
    root.setLevel(level.upper())
    quiet(chatty_off)


def quiet(chatty: bool = False) -> None:
    for name in NOISY + (CHATTY if chatty else ()):
        logging.getLogger(name).setLevel(logging.WARNING)


def restyle(*names: str, fmt: str) -> None:
    """Give medic's format to handlers another library set up (uvicorn's loggers)."""
    for name in names:
        for handler in logging.getLogger(name).handlers:
            apply(handler, fmt)
