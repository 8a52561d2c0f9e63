"""`current_job()`: what a running job may ask of medic, and tell it, without a round trip.

`cancelled()` reads a flag the process's heartbeat sets when the ledger says the job's cancel was
requested (or a broadcast made that beat come early); `progress(fraction, message)` keeps the
latest report in memory, and the heartbeat writes only the latest changed one per beat. So
neither costs a ledger write per call: a job may poll or report in a tight loop.

The state lives per process (a prefork child runs one job at a time; a threads pool several, each
job seeing its own through a context variable); the heartbeat thread is its only other reader.
"""

from __future__ import annotations

import contextvars
import math
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

MAX_MESSAGE = 500  # characters of a progress message kept (the rest is cut)


@dataclass
class _Run:
    delivery_id: uuid.UUID
    cancel_requested: bool = False
    progress: dict[str, Any] | None = None
    unsent: bool = False  # a report newer than the last one written


_runs: dict[uuid.UUID, _Run] = {}
_lock = threading.Lock()
_current: contextvars.ContextVar[tuple[uuid.UUID, _Run] | None] = contextvars.ContextVar("medic_job", default=None)


class CurrentJob:
    """The job this thread is running (see `current_job()`)."""

    def __init__(self, job_id: uuid.UUID, run: _Run) -> None:
        self.id = job_id
        self.delivery_id = run.delivery_id
        self._run = run

    def cancelled(self) -> bool:
        """True once a cancel of this job was requested: clean up and return (or raise) soon; a
        prefork worker kills the job MEDIC_CANCEL_GRACE_SECONDS after it learned of the request."""
        return self._run.cancel_requested

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report how far the job is (0..1) and what it does; only the latest report of each
        heartbeat is written (`GET /jobs/{id}` `progress`, and a `progress` event on the stream).

        Raises:
            ValueError: `fraction` is not a number from 0 to 1, or `message` is not a string.
        """
        report = validate(fraction, message)
        with _lock:
            if report != self._run.progress:
                self._run.progress = report
                self._run.unsent = True


def validate(fraction: Any, message: Any) -> dict[str, Any]:
    """The report as it is kept: `{"fraction": float, "message": str | None}`.

    Raises:
        ValueError: a fraction that is no real number in [0, 1], or a message that is no string.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not math.isfinite(fraction):
        raise ValueError(f"progress fraction must be a number from 0 to 1, not {fraction!r}")
    if not 0 <= fraction <= 1:
        raise ValueError(f"progress fraction must be from 0 to 1, not {fraction}")
    if message is not None and not isinstance(message, str):
        raise ValueError(f"progress message must be a string, not {type(message).__name__}")
    # NUL: PostgreSQL's JSONB refuses it
    text = None if message is None else message[:MAX_MESSAGE].replace("\x00", "\\x00")
    return {"fraction": float(fraction), "message": text}


def current_job() -> CurrentJob:
    """The job this thread runs.

    Raises:
        LookupError: called outside a running job.
    """
    found = _current.get()
    if found is None:
        raise LookupError("current_job() is only defined inside a running job")
    return CurrentJob(*found)


@contextmanager
def running(job_id: uuid.UUID, delivery_id: uuid.UUID) -> Iterator[None]:
    """Make the job the current one of this thread while its body runs (task.py)."""
    run = _Run(delivery_id)
    with _lock:
        _runs[job_id] = run
    reset = _current.set((job_id, run))
    try:
        yield
    finally:
        _current.reset(reset)
        with _lock:
            if _runs.get(job_id) is run:
                del _runs[job_id]


def mark_cancel_requested(job_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
    """The ledger says these jobs' cancel was requested: `cancelled()` is True for them from now.
    Returns the ones this call marked (newly learned: their grace starts now)."""
    learned: set[uuid.UUID] = set()
    with _lock:
        for job_id in job_ids:
            run = _runs.get(job_id)
            if run is not None and not run.cancel_requested:
                run.cancel_requested = True
                learned.add(job_id)
    return learned


def is_cancel_requested(job_id: uuid.UUID) -> bool:
    with _lock:
        run = _runs.get(job_id)
        return run is not None and run.cancel_requested


def take_progress(held: Mapping[uuid.UUID, uuid.UUID]) -> dict[uuid.UUID, tuple[uuid.UUID, dict[str, Any]]]:
    """The unsent latest report of each held job (job -> (delivery, report)), marked sent."""
    out: dict[uuid.UUID, tuple[uuid.UUID, dict[str, Any]]] = {}
    with _lock:
        for job_id, delivery_id in held.items():
            run = _runs.get(job_id)
            if run is not None and run.unsent and run.progress is not None and run.delivery_id == delivery_id:
                out[job_id] = (delivery_id, dict(run.progress))
                run.unsent = False
    return out


def unsend(reports: Mapping[uuid.UUID, tuple[uuid.UUID, dict[str, Any]]]) -> None:
    """A write of `reports` failed: send them with the next beat, unless a newer one came."""
    with _lock:
        for job_id, (_, report) in reports.items():
            run = _runs.get(job_id)
            if run is not None and run.progress == report:
                run.unsent = True
