"""Prometheus metrics of the control loops, written by the control worker's processes.

Made lazily, like the job metrics (worker/runtime/job_metrics.py): the control worker is a prefork
worker too, so its values go to the multiprocess directory its main process serves on port 9809.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram

from worker.forksafe import PerProcess

if TYPE_CHECKING:
    from worker.control.registry import Loop

log = logging.getLogger(__name__)

LOOP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


@dataclass
class LoopMetrics:
    runs: Counter
    last_run: Gauge
    duration: Histogram
    recoveries: Counter


def _make_loop_metrics(_: str) -> LoopMetrics:
    return LoopMetrics(
        runs=Counter("medic_loop_runs_total", "Control loop runs (not skipped)", ["loop"], registry=None),
        last_run=Gauge(
            "medic_loop_last_run_timestamp_seconds",
            "When the loop last ran (epoch seconds)",
            ["loop"],
            multiprocess_mode="max",
            registry=None,
        ),
        duration=Histogram(
            "medic_loop_duration_seconds",
            "Run time of a control loop",
            ["loop"],
            buckets=LOOP_BUCKETS,
            registry=None,
        ),
        recoveries=Counter(
            "medic_recoveries_total", "Jobs a healing loop gave back", ["loop", "outcome"], registry=None
        ),
    )


# One set per process (forksafe: a prefork child makes its own, after the multiprocess switch).
_metrics: PerProcess[str, LoopMetrics] = PerProcess(_make_loop_metrics)


def loop_metrics() -> LoopMetrics:
    return _metrics.get("loop_metrics")


def observe_run(loop: Loop, record: dict[str, Any]) -> None:
    """Count one run of `loop` (its run record from run_loop), with the recoveries its
    declaration names (worker/control/registry.py); never raises."""
    if "skipped" in record:
        return
    try:
        m = loop_metrics()
        m.runs.labels(loop.name).inc()
        m.last_run.labels(loop.name).set(float(record["at"]))
        m.duration.labels(loop.name).observe(float(record["seconds"]))
        for count, outcome in loop.recoveries.items():
            if record.get(count):
                m.recoveries.labels(loop.name, outcome).inc(int(record[count]))
    except Exception:
        log.exception("loop metrics not recorded")
