"""Prometheus metrics of job runs: outcomes, run time and queue wait, by queue and type.

Made lazily, once per process: prometheus-client picks a metric's value class when the metric is
made, and a worker's main process switches it to multiprocess mode (worker/runtime/scrape.py)
before its pool forks the children that run the jobs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram

from worker.clock import utcnow
from worker.forksafe import PerProcess
from worker.ledger.states import JobState
from worker.runtime.outcome import OutcomeKind

if TYPE_CHECKING:
    from worker.ledger.records import Job

log = logging.getLogger(__name__)

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class FinishedOutcome(StrEnum):
    """The `outcome` label of medic_jobs_finished_total (docs/operations.md and the alert rules
    query these strings)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"  # attempts left: it runs again
    DEAD = "dead"  # it used its last attempt
    TIMED_OUT = "timed_out"
    WORKER_LOST = "worker_lost"
    CANCELLED = "cancelled"  # its cancel was requested: however the run ended, the job is cancelled


_LABEL_OF_KIND = {
    OutcomeKind.SUCCEEDED: FinishedOutcome.SUCCEEDED,
    OutcomeKind.FAILED: FinishedOutcome.FAILED,
    OutcomeKind.TIMEOUT: FinishedOutcome.TIMED_OUT,
    OutcomeKind.WORKER_LOST: FinishedOutcome.WORKER_LOST,
}


@dataclass
class JobMetrics:
    finished: Counter
    duration: Histogram
    queue_wait: Histogram


def _make_job_metrics(_: str) -> JobMetrics:
    return JobMetrics(
        finished=Counter(
            "medic_jobs_finished_total",
            "Job runs ended, by outcome",
            ["queue", "type", "outcome"],
            registry=None,
        ),
        duration=Histogram(
            "medic_job_duration_seconds",
            "Run time of one attempt",
            ["queue", "type"],
            buckets=DURATION_BUCKETS,
            registry=None,
        ),
        queue_wait=Histogram(
            "medic_job_queue_wait_seconds",
            "Claim time minus publish time (or not_before, if later)",
            ["queue"],
            buckets=DURATION_BUCKETS,
            registry=None,
        ),
    )


# One set per process (forksafe: a prefork child makes its own, after the multiprocess switch).
_metrics: PerProcess[str, JobMetrics] = PerProcess(_make_job_metrics)


def job_metrics() -> JobMetrics:
    """The job metrics of this process, made on first use (after the multiprocess switch)."""
    return _metrics.get("job_metrics")


def outcome_label(kind: OutcomeKind, after: Job | None) -> FinishedOutcome:
    """The label of one finished run: a run that did not succeed and left the job dead is `dead`
    (it used the last attempt), whatever ended it; a run that left it cancelled is `cancelled`."""
    if after is not None and after.state == JobState.CANCELLED:
        return FinishedOutcome.CANCELLED
    if kind is not OutcomeKind.SUCCEEDED and after is not None and after.state == JobState.DEAD:
        return FinishedOutcome.DEAD
    return _LABEL_OF_KIND[kind]


def job_finished(job: Job, kind: OutcomeKind, after: Job | None) -> None:
    """Count one run of `job` (the claimed row) that ended with `kind`; never raises."""
    try:
        m = job_metrics()
        now = utcnow()
        started = job.started_at or now
        m.finished.labels(job.queue, job.type, outcome_label(kind, after)).inc()
        m.duration.labels(job.queue, job.type).observe(max(0.0, (now - started).total_seconds()))
        ready_at = max((t for t in (job.published_at, job.not_before) if t is not None), default=None)
        if ready_at is not None:
            m.queue_wait.labels(job.queue).observe(max(0.0, (started - ready_at).total_seconds()))
    except Exception:
        log.exception("job metrics not recorded")
