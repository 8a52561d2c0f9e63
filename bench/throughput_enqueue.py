"""Scenario (a): the enqueue rate from Python, medic `enqueue()` / `enqueue_many()` vs `apply_async`.

Also the py-spy profile of the bench process itself while it runs one of those loops, since the
enqueue cost is paid in the caller's process, not in a server.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from bench.profiling import has, load_check, profile_report, spy
from bench.stats import ratio, summary
from bench.throughput_env import ECHO_ARGS, Q_ENQUEUE, Bench
from bench.throughput_steps import ENQUEUE_RULES


def _enqueue_steps(bench: Bench) -> dict[str, Callable[[], int]]:
    """One call of each mode; each returns how many jobs it enqueued."""
    from worker.submit import JobRequest, enqueue, enqueue_many

    b = bench.sizes.batch_size
    noop = bench.plain.plain_noop

    def medic_single() -> int:
        enqueue("examples.echo", ECHO_ARGS, queue=Q_ENQUEUE)
        return 1

    def medic_batch() -> int:
        enqueue_many([JobRequest("examples.echo", ECHO_ARGS, queue=Q_ENQUEUE) for _ in range(b)])
        return b

    def plain_apply_async() -> int:
        noop.apply_async(queue=Q_ENQUEUE)
        return 1

    def plain_batch() -> int:
        """Plain Celery's own batch: the same `b` messages in one Redis pipeline, as medic does."""
        with bench.plain.app.producer_or_acquire() as producer, producer.batch(max_size=1000):
            for _ in range(b):
                noop.apply_async(queue=Q_ENQUEUE, producer=producer)
        return b

    return {
        "medic_single": medic_single,
        "medic_batch": medic_batch,
        "plain_apply_async": plain_apply_async,
        "plain_batch": plain_batch,
    }


def _rate(step: Callable[[], int], seconds: float, cap: int) -> float:
    """Jobs per second of `step` called in a loop for `seconds` or up to `cap` jobs."""
    n = 0
    started = time.perf_counter()
    deadline = started + seconds
    while n < cap and time.perf_counter() < deadline:
        n += step()
    return n / (time.perf_counter() - started)


def enqueue(bench: Bench) -> dict[str, Any]:
    """A warm-up of every mode, then alternating measured runs (plain twice per round)."""
    s = bench.sizes
    steps = _enqueue_steps(bench)
    for step in steps.values():  # warm-up: imports, connection pools, statement caches
        bench.reset(Q_ENQUEUE)
        _rate(step, s.warmup_s, s.enqueue_cap)
    runs: dict[str, list[float]] = {name: [] for name in steps}
    loads: list[dict[str, float]] = []
    order = ["medic_single", "plain_apply_async", "medic_batch", "plain_batch"]
    for _ in range(s.rounds):
        loads.append(load_check())
        for name in order:
            bench.reset(Q_ENQUEUE)
            runs[name].append(_rate(steps[name], s.enqueue_s, s.enqueue_cap))
    bench.reset(Q_ENQUEUE)
    single = summary(runs["medic_single"])
    batch = summary(runs["medic_batch"])
    plain = summary(runs["plain_apply_async"])
    plain_batch = summary(runs["plain_batch"])
    return {
        "unit": "jobs/s",
        "each_run": f"{s.enqueue_s} s or {s.enqueue_cap} jobs, whichever first; empty table and queue",
        "order": f"{s.rounds} rounds of medic_single, plain_apply_async, medic_batch, plain_batch",
        "load_before_each_round": loads,
        "medic_single": {**single, "call": "worker.enqueue('examples.echo', {'message': 'x'})"},
        "medic_batch": {**batch, "call": f"worker.enqueue_many([...{s.batch_size} JobRequests...])"},
        "plain_apply_async": {**plain, "call": "plain.noop.apply_async()"},
        "plain_batch": {
            **plain_batch,
            "call": f"{s.batch_size} x plain.noop.apply_async(producer=p) inside producer.batch(): one pipeline",
        },
        "ratio_single_vs_plain": ratio(single, plain, 0.6),
        "ratio_batch_vs_plain_batch": ratio(batch, plain_batch, 1.0),
        "ratio_batch_vs_plain_single_for_reference": ratio(batch, plain, 1.0),
    }


def profile_enqueue(bench: Bench, mode: str, rate: float | None) -> dict[str, Any]:
    """py-spy on this very process while it runs the `mode` enqueue loop.

    Only the stacks that pass through this function count (`must` below): keep its name."""
    s = bench.sizes
    step = _enqueue_steps(bench)[mode]
    out = bench.log_dir / f"profile-enqueue-{mode}.txt"
    bench.reset(Q_ENQUEUE)
    proc = spy(os.getpid(), s.profile_s, out)
    n = 0
    started = time.perf_counter()
    deadline = started + s.profile_s + 15  # py-spy's own start-up, bounded
    while proc.poll() is None and time.perf_counter() < deadline and n < 200_000:
        n += step()
    elapsed = time.perf_counter() - started
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    bench.reset(Q_ENQUEUE)
    report = profile_report(
        out,
        ENQUEUE_RULES,
        "other: Python glue (JobRequest, Enqueued, Row objects), GC",
        ms_per_job=1000 / rate if rate else None,
        must=has(func="profile_enqueue"),
        top=9,
    )
    report["jobs_during_profile"] = n
    report["rate_under_profiler_jobs_per_s"] = round(n / elapsed, 1)
    report["ms_per_job_basis"] = f"median unprofiled {mode} rate"
    return report
