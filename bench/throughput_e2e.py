"""Scenario (c): N no-op jobs end to end through one worker per side, medic vs plain Celery.

Same prefork concurrency and acks_late on both sides; timed from the first publish to the last
completion (medic: the ledger's finished_at; plain: each task records its completion time in
Redis), with the CPU of each process group metered per job, then py-spy on each worker's main
process and children while a backlog drains.
"""

from __future__ import annotations

import functools
import os
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from bench.medic_run import plain_worker_argv
from bench.profiling import CpuMeter, load_check, pids_named, profile_report, spy, wait_spy
from bench.stats import ratio, summary
from bench.throughput_env import ECHO_ARGS, Q_E2E, Bench, background
from bench.throughput_steps import CHILD_REST, CHILD_RULES, PARENT_REST, PARENT_RULES
from worker.testing.processes import Proc, wait_for

Drain = Callable[[Bench, int, float], dict[str, Any]]  # publish n jobs, wait (at most cap_s) for them


def _start_workers(bench: Bench, events: bool) -> tuple[Proc, Proc]:
    """One medic and one plain Celery worker on Q_E2E, same prefork concurrency and the same event
    setting (`-E` on both or on neither); both ready."""
    from worker.ops.processes import worker_cmd

    c = bench.sizes.concurrency
    flag = ["-E"] if events else []
    tag = "ev" if events else "noev"
    medic = bench.procs.start(f"medic-e2e-{tag}", [*worker_cmd(Q_E2E, c, f"medic-e2e-{tag}"), *flag])
    plain = bench.procs.start(f"plain-e2e-{tag}", [*plain_worker_argv(Q_E2E, c, f"plain-e2e-{tag}@%h"), *flag])
    for proc in (medic, plain):
        wait_for(lambda p=proc: "ready." in p.log() or not p.alive(), 30, 0.1, f"{proc.name} ready")  # type: ignore[misc]
        assert proc.alive(), proc.log()
    return medic, plain


def _medic_e2e(bench: Bench, n: int, cap_s: float) -> dict[str, Any]:
    """Publish n echo jobs in batches; done when the ledger has them all finished."""
    from worker.ledger import db
    from worker.submit import JobRequest, enqueue_many

    b = bench.sizes.batch_size
    started = time.time()
    for i in range(0, n, b):
        enqueue_many([JobRequest("examples.echo", ECHO_ARGS, queue=Q_E2E) for _ in range(min(b, n - i))])
    published = time.time()
    query = sa.text(
        "SELECT count(*) FILTER (WHERE state = 'succeeded'),"
        " count(*) FILTER (WHERE state NOT IN ('queued', 'running', 'succeeded')),"
        " max(finished_at) FROM jobs WHERE queue = :q"
    )
    deadline = time.monotonic() + cap_s
    while True:
        with db.connect() as conn:
            ok, bad, last = conn.execute(query, {"q": Q_E2E}).one()
        if ok + bad >= n or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return _e2e_result(n, ok, started, published, last.timestamp() if last else None, bad)


def _plain_e2e(bench: Bench, n: int, cap_s: float) -> dict[str, Any]:
    """Publish n plain tasks in batches of the same size as medic's, each batch in one pipeline
    (producer.batch()); done when each has recorded its completion in Redis."""
    task = bench.plain.plain_noop_done
    b = bench.sizes.batch_size
    tag = uuid.uuid4().hex[:12]
    done_key, at_key = f"{bench.plain_prefix}done:{tag}", f"{bench.plain_prefix}done_at:{tag}"
    started = time.time()
    for i in range(0, n, b):
        with bench.plain.app.producer_or_acquire() as producer, producer.batch(max_size=1000):
            for _ in range(min(b, n - i)):
                task.apply_async((tag,), queue=Q_E2E, producer=producer)
    published = time.time()
    deadline = time.monotonic() + cap_s
    while int(bench.r.get(done_key) or 0) < n and time.monotonic() <= deadline:
        time.sleep(0.1)
    times = [float(t) for t in bench.r.lrange(at_key, 0, -1)]
    bench.r.delete(done_key, at_key)
    return _e2e_result(n, len(times), started, published, max(times) if times else None, 0)


def _e2e_result(n: int, ok: int, started: float, published: float, last: float | None, bad: int) -> dict[str, Any]:
    span = (last - started) if last else None
    return {
        "completed": ok,
        "of": n,
        "failed": bad,
        "jobs_per_s": round(ok / span, 1) if span and ok == n else None,
        "first_publish_to_last_completion_s": round(span, 3) if span else None,
        "publishing_took_s": round(published - started, 3),
    }


def e2e(bench: Bench) -> dict[str, Any]:
    """The scenario with task events off on both sides, then on on both sides."""
    out: dict[str, Any] = {}
    for events in (False, True):
        out["events_on" if events else "events_off"] = _e2e_setting(bench, events, profile=bench.profile and not events)
    return out


def _e2e_setting(bench: Bench, events: bool, *, profile: bool) -> dict[str, Any]:
    """Both workers up with one event setting, a warm-up each, alternating measured runs with a
    load check before each round, then (optionally) the profiles; both workers stopped after."""
    s = bench.sizes
    medic_w, plain_w = _start_workers(bench, events)
    bench_pid = os.getpid()

    def groups() -> dict[str, list[int]]:
        return {
            "medic_worker_main": [medic_w.pid],
            "medic_worker_children": medic_w.children(),
            "plain_worker_main": [plain_w.pid],
            "plain_worker_children": plain_w.children(),
            "postgres_all": pids_named("postgres"),
            "redis_server": pids_named("redis-server"),
            "bench_process": [bench_pid],
        }

    sides: dict[str, Drain] = {"medic": _medic_e2e, "plain": _plain_e2e}
    try:
        for run in sides.values():  # warm-up: children import, connect, fill statement caches
            bench.reset(Q_E2E)
            run(bench, s.e2e_warmup, s.e2e_cap_s)
        runs: dict[str, list[dict[str, Any]]] = {"medic": [], "plain": []}
        loads: list[dict[str, float]] = []
        meter = CpuMeter(groups)
        for _ in range(s.rounds):
            loads.append(load_check())
            for name, run in sides.items():
                bench.reset(Q_E2E)
                meter.start()
                result = run(bench, s.e2e_jobs, s.e2e_cap_s)
                result["cpu"] = meter.stop()
                runs[name].append(result)
        out: dict[str, Any] = {
            "unit": "jobs/s from the first publish to the last completion",
            "jobs_per_run": s.e2e_jobs,
            "task_events": "on (-E) on both workers" if events else "off (no -E) on both workers",
            "workers": f"one worker per side, prefork -c {s.concurrency}, prefetch 1, acks_late, INFO logging",
            "publishing": f"both sides in batches of {s.batch_size}, one Redis pipeline per batch "
            "(medic: enqueue_many; plain: apply_async inside producer.batch())",
            "completion": "the wall-clock time the worker child records at completion, before the ack "
            "(medic: the ledger's finished_at at finalize; plain: RPUSH(time) in the task), "
            "polled every 0.1 s on both sides",
            "order": f"{s.rounds} rounds of medic, plain after a warm-up of {s.e2e_warmup} jobs each",
            "load_before_each_round": loads,
        }
        for name, rs in runs.items():
            rates = [r["jobs_per_s"] for r in rs if r["jobs_per_s"]]
            cpu_ms = {
                group: round(statistics.median(r["cpu"]["cpu_s"][group] for r in rs) * 1000 / s.e2e_jobs, 3)
                for group in rs[0]["cpu"]["cpu_s"]
                if not group.startswith("plain" if name == "medic" else "medic")
            }
            out[name] = {
                "jobs_per_s": summary(rates),
                "all_completed": all(r["completed"] == r["of"] for r in rs),
                "runs": [{k: v for k, v in r.items() if k != "cpu"} for r in rs],
                "cpu_ms_per_job_median": cpu_ms,
                "machine_busy_cores_median": statistics.median(r["cpu"]["machine_busy_cores"] for r in rs),
            }
        out["ratio_medic_vs_plain"] = ratio(out["medic"]["jobs_per_s"], out["plain"]["jobs_per_s"], 0.8)
        if profile:
            medians = {name: out[name]["jobs_per_s"]["median"] or 100.0 for name in sides}
            out["profiles"] = profile_workers(bench, medic_w, plain_w, medians)
    finally:
        bench.stop(plain_w)
        bench.stop(medic_w)
    return out


def profile_workers(bench: Bench, medic_w: Proc, plain_w: Proc, rates: dict[str, float]) -> dict[str, Any]:
    """py-spy on each worker's main process and children while a backlog drains."""
    s = bench.sizes
    out: dict[str, Any] = {}
    drains: tuple[tuple[str, Proc, Drain], ...] = (("medic", medic_w, _medic_e2e), ("plain", plain_w, _plain_e2e))
    for name, proc, run in drains:
        # a backlog that keeps the worker busy through the whole profile, and not much longer
        n = max(50, min(20_000, int(rates[name] * (s.profile_s + 2))))
        bench.reset(Q_E2E)
        pids = {"main": proc.pid, **{f"child{i}": pid for i, pid in enumerate(proc.children())}}
        files = {k: bench.log_dir / f"profile-{name}-worker-{k}.txt" for k in pids}
        with background(functools.partial(run, bench, n, s.e2e_cap_s)) as result:
            time.sleep(0.5)  # the backlog is building: the worker is busy
            spies = [spy(pids[k], s.profile_s, files[k]) for k in files]
            for sp in spies:
                wait_spy(sp, s.profile_s + 20)
        drained = result.get("value", {})
        child_stacks = [f for k, f in files.items() if k.startswith("child")]
        merged = bench.log_dir / f"profile-{name}-worker-children.txt"
        merged.write_text("".join(p.read_text(errors="replace") for p in child_stacks if p.exists()))
        out[name] = {
            "children_main_thread": profile_report(merged, CHILD_RULES, CHILD_REST, top=8),
            "main_process": profile_report(
                files["main"], PARENT_RULES, PARENT_REST, top=6, idle_label="idle: event loop waiting in epoll"
            ),
            "drain_during_profile": {k: drained.get(k) for k in ("completed", "of", "jobs_per_s")},
        }
    bench.reset(Q_E2E)
    return out
