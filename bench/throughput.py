"""Throughput: medic against plain Celery, side by side in one run, same Redis, same settings.

Three comparisons (enqueue, http, e2e), each a pair of sides run alternately (medic, plain, medic,
plain ...) after a warm-up of each, on an empty ledger and empty queues every time, the load
recorded before every round and the CPU of each process group metered; what each compares, like
for like, is in docs/benchmarks.md. Prints one JSON object, which bench/tables.py renders.

    make bench BENCH=throughput                                    # ~3 min -> docs/bench/throughput.json
    .venv/bin/python -m bench.throughput --quick > /tmp/tp.json    # tiny sizes, ~30 s: a smoke test
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import redis
import sqlalchemy as sa

from bench import common
from bench.common import MedicRun
from worker.testing.processes import Proc, free_port

HOST = "127.0.0.1"
QUEUE = "bench-tp"  # enqueue and http: nobody consumes it; e2e: one worker per side, each its prefix
ECHO = {"message": "x"}

FINISHED = """
SELECT count(*) FILTER (WHERE state = 'succeeded'),
       count(*) FILTER (WHERE state NOT IN ('queued', 'running', 'succeeded')), max(finished_at)
FROM jobs
"""

Side = Callable[[bool], dict[str, Any]]  # one measurement (True: the warm-up's size) -> its figures


@dataclass(frozen=True)
class Sizes:
    """How much each comparison does: FULL for the published figures, QUICK for a smoke test."""

    rounds: int
    enqueue_s: float  # one enqueue measurement: this long or ...
    enqueue_cap: int  # ... this many jobs, whichever first
    batch: int  # enqueue_many's batch, and both sides' publish batch end to end
    http_requests: int  # one HTTP measurement: this many requests or ...
    http_s: float  # ... this long
    http_threads: int
    e2e_jobs: int
    e2e_cap_s: float  # the longest wait for one end-to-end measurement
    concurrency: int  # prefork children per worker


# enqueue() and POST /jobs are admitted like any caller's: the queue nobody consumes and the tenant
# need room for the most one measurement enqueues (the ledger and queues are emptied between them).
ROOM_FOR_ONE_MEASUREMENT = {
    "MEDIC_QUEUE_WATERMARKS": json.dumps({QUEUE: [1_000_000, 500_000]}),
    "MEDIC_TENANT_QUEUED_QUOTA": "1000000",
}

FULL = Sizes(3, 3.0, 50_000, 100, 1200, 8.0, 8, 2000, 90.0, 2)
QUICK = Sizes(2, 0.3, 2_000, 20, 60, 3.0, 4, 60, 30.0, 2)


class Bench:
    """One run: a private medic (its processes those of both sides), plain Celery on its own prefix."""

    def __init__(self, sizes: Sizes, medic: MedicRun) -> None:
        self.sizes, self.medic, self.procs = sizes, medic, medic.procs
        self.plain_prefix = medic.plain_prefix
        self.plain = medic.plain()
        self.r = redis.Redis.from_url(common.REDIS_URL, decode_responses=True)

    def stop(self, *procs: Proc) -> None:
        """Stop processes now, once their comparison is done, rather than with the run."""
        for proc in procs:
            proc.stop()
            self.procs.procs.remove(proc)

    def reset(self) -> None:
        """An empty ledger and empty queues before each measurement, so every one starts alike."""
        from worker.ledger import db

        with db.begin() as conn:
            conn.execute(sa.text("TRUNCATE jobs CASCADE"))
        for prefix in (self.medic.broker_prefix, self.plain_prefix):
            for key in self.r.scan_iter(match=f"{prefix}{QUEUE}*", count=1000):
                self.r.delete(key)
        gc.collect()

    def alternate(self, sides: dict[str, Side], meter: common.CpuMeter | None = None) -> dict[str, Any]:
        """A warm-up of each side, then `rounds` rounds of every side in turn, the load checked
        before each round and the CPU metered around each measurement; every raw result."""
        for side in sides.values():
            self.reset()
            side(True)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
        loads = []
        for _ in range(self.sizes.rounds):
            loads.append(common.load_check())
            for name, side in sides.items():
                self.reset()
                if meter:
                    meter.start()
                runs[name].append(side(False))
                if meter:
                    runs[name][-1]["cpu"] = meter.stop()
        self.reset()
        return {"load_before_each_round": loads, "runs": runs}


def report(done: dict[str, Any], how: dict[str, Any], figures: dict[str, int], per: str, count: str) -> dict[str, Any]:
    """A medic/plain comparison's JSON: how it ran, the load before each round, and per side the
    summary of each figure (name -> digits; latencies lower is better), every raw run, and the
    median CPU ms per `per` (`count` in each run) of each process group, the other side's left out."""
    out = {**how, "load_before_each_round": done["load_before_each_round"]}
    for name, rs in done["runs"].items():
        out[name] = {f: common.summary([r[f] for r in rs if r[f]], higher_is_better="_ms" not in f, digits=d)
                     for f, d in figures.items()}  # fmt: skip
        out[name]["runs"] = [{k: v for k, v in r.items() if k != "cpu"} for r in rs]
        groups = [g for g in rs[0]["cpu"] if not g.startswith("plain" if name == "medic" else "medic")]
        out[name][f"cpu_ms_per_{per}_median"] = {
            g: round(statistics.median(r["cpu"][g] * 1000 / max(1, r[count]) for r in rs), 3) for g in groups
        }
    return out


# ------------------------------------------------------------------------------------ enqueue


def rate(step: Callable[[], int], seconds: float, cap: int) -> dict[str, Any]:
    """Jobs per second of `step` (which returns the jobs it enqueued) in a loop, bounded both ways."""
    n, started = 0, time.perf_counter()
    while n < cap and time.perf_counter() < started + seconds:
        n += step()
    return {"jobs_per_s": n / (time.perf_counter() - started)}


def enqueue(bench: Bench) -> dict[str, Any]:
    from worker import JobRequest, enqueue, enqueue_many

    s, noop = bench.sizes, bench.plain.plain_noop

    def medic_single() -> int:
        enqueue("examples.echo", ECHO, queue=QUEUE)
        return 1

    def plain_apply_async() -> int:
        noop.apply_async(queue=QUEUE)
        return 1

    def medic_batch() -> int:
        return len(enqueue_many([JobRequest("examples.echo", ECHO, queue=QUEUE) for _ in range(s.batch)]))

    def plain_batch() -> int:
        """Plain Celery's own batch: the same messages in one Redis pipeline, as medic sends them."""
        with bench.plain.celery.producer_or_acquire() as producer, producer.batch(max_size=1000):
            for _ in range(s.batch):
                noop.apply_async(queue=QUEUE, producer=producer)
        return s.batch

    def side(step: Callable[[], int]) -> Side:
        return lambda warm_up: rate(step, s.enqueue_s / 6 if warm_up else s.enqueue_s, s.enqueue_cap)

    sides = {f.__name__: side(f) for f in (medic_single, plain_apply_async, medic_batch, plain_batch)}
    done = bench.alternate(sides)
    out: dict[str, Any] = {"unit": "jobs/s", "each_run": f"{s.enqueue_s} s or {s.enqueue_cap} jobs, whichever first"}
    out["load_before_each_round"] = done["load_before_each_round"]
    for name, runs in done["runs"].items():
        out[name] = common.summary([r["jobs_per_s"] for r in runs])
    out["ratio_single_vs_plain"] = common.ratio(out["medic_single"], out["plain_apply_async"], 0.6)
    out["ratio_batch_vs_plain_batch"] = common.ratio(out["medic_batch"], out["plain_batch"], 1.0)
    return out


# --------------------------------------------------------------------------------------- http


def post_jobs(
    url: str, body: dict[str, Any], headers: dict[str, str], n: int, seconds: float, threads: int
) -> dict[str, Any]:
    """At most `n` POST /jobs or `seconds`, from `threads` keep-alive clients; rate and latency."""
    counter, deadline = itertools.count(), time.monotonic() + seconds

    def client() -> tuple[list[float], Counter[str]]:
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        with httpx.Client(base_url=url, headers=headers, timeout=10.0) as c:
            while time.monotonic() < deadline and next(counter) < n:
                t = time.perf_counter()
                try:
                    status = c.post("/jobs", json=body).status_code
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] += 1
                    continue
                if status in (200, 202):
                    latencies.append(time.perf_counter() - t)
                else:
                    errors[str(status)] += 1
        return latencies, errors

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(lambda _: client(), range(threads)))
    elapsed = time.perf_counter() - started
    latencies = [x for lat, _ in results for x in lat]
    return {
        "ok": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": common.percentile_ms(latencies, 0.5, digits=3),
        "p99_ms": common.percentile_ms(latencies, 0.99, digits=3),
        "errors": dict(sum((e for _, e in results), Counter())),
    }


def http(bench: Bench) -> dict[str, Any]:
    s = bench.sizes
    key = bench.medic.api_key("bench", "submit")
    medic_proc, medic_url = bench.procs.api("medic-api")
    plain_url = f"http://{HOST}:{free_port()}"
    plain_argv = [sys.executable, "-m", "uvicorn", "bench.plain:api", "--host", HOST,
                  "--port", plain_url.rsplit(":", 1)[1], "--no-access-log"]  # fmt: skip
    plain_proc = bench.procs.http_server("plain-api", plain_argv, plain_url)
    medic_body = {"type": "examples.echo", "args": ECHO, "queue": QUEUE}
    plain_body = {"type": "plain.noop", "args": {}, "queue": QUEUE}

    def side(url: str, body: dict[str, Any], headers: dict[str, str]) -> Side:
        n = s.http_requests
        return lambda warm_up: post_jobs(url, body, headers, n // (8 if warm_up else 1), s.http_s, s.http_threads)

    sides = {
        "medic": side(medic_url, medic_body, {"Authorization": f"Bearer {key}"}),
        "plain": side(plain_url, plain_body, {}),
    }
    meter = common.CpuMeter(lambda: {"medic_api": [medic_proc.pid], "plain_api": [plain_proc.pid], **shared_groups()})
    done = bench.alternate(sides, meter)
    bench.stop(plain_proc, medic_proc)
    how = {
        "unit": "requests/s (2xx only), latency ms",
        "client": f"httpx, {s.http_threads} keep-alive threads, {s.http_requests} requests or {s.http_s} s a run",
        "medic_body": medic_body,
        "plain_endpoint": "bench/plain.py: sync FastAPI route, pydantic body, apply_async, no auth",
    }
    out = report(done, how, {"rps": 1, "p50_ms": 2, "p99_ms": 2}, "request", "ok")
    out["ratio_rps_medic_vs_plain"] = common.ratio(out["medic"]["rps"], out["plain"]["rps"], 0.8)
    return out


def shared_groups() -> dict[str, list[int]]:
    """The process groups both sides share: PostgreSQL, Redis, and this process (the client)."""
    return {
        "postgres_all": common.pids_named("postgres"),
        "redis_server": common.pids_named("redis-server"),
        "bench_process": [os.getpid()],
    }


# ----------------------------------------------------------------------------------- e2e


def medic_drain(bench: Bench, n: int) -> dict[str, Any]:
    """Publish n echo jobs in batches; done when the ledger has them all finished."""
    from worker import JobRequest, enqueue_many
    from worker.ledger import db

    b = bench.sizes.batch
    started = time.time()
    for i in range(0, n, b):
        enqueue_many([JobRequest("examples.echo", ECHO, queue=QUEUE) for _ in range(min(b, n - i))])

    def finished() -> Any:
        with db.connect() as conn:
            return conn.execute(sa.text(FINISHED)).one()

    common.poll_until(lambda: sum(finished()[:2]) >= n, bench.sizes.e2e_cap_s)
    ok, bad, last = finished()
    return drained(n, ok, bad, started, last.timestamp() if last else None)


def plain_drain(bench: Bench, n: int) -> dict[str, Any]:
    """Publish n tasks in batches of the same size, each in one pipeline (producer.batch()); done
    when each has recorded its completion in Redis."""
    task, b, tag = bench.plain.plain_noop_done, bench.sizes.batch, uuid.uuid4().hex[:12]
    done_key, at_key = f"{bench.plain_prefix}done:{tag}", f"{bench.plain_prefix}done_at:{tag}"
    started = time.time()
    for i in range(0, n, b):
        with bench.plain.celery.producer_or_acquire() as producer, producer.batch(max_size=1000):
            for _ in range(min(b, n - i)):
                task.apply_async((tag,), queue=QUEUE, producer=producer)
    common.poll_until(lambda: int(bench.r.get(done_key) or 0) >= n, bench.sizes.e2e_cap_s)
    times = [float(t) for t in bench.r.lrange(at_key, 0, -1)]
    bench.r.delete(done_key, at_key)
    return drained(n, len(times), 0, started, max(times) if times else None)


def drained(n: int, ok: int, bad: int, started: float, last: float | None) -> dict[str, Any]:
    span = (last - started) if last else None
    return {
        "completed": ok,
        "of": n,
        "failed": bad,
        "jobs_per_s": round(ok / span, 1) if span and ok == n else None,
        "first_publish_to_last_completion_s": round(span, 3) if span else None,
    }


def e2e(bench: Bench, events: bool) -> dict[str, Any]:
    """One medic and one plain worker with the same concurrency and event setting, alternating."""
    s, flags = bench.sizes, ["-E"] if events else []
    tag = "ev" if events else "noev"
    from worker.ops.processes import worker_cmd

    medic_w = common.ready(
        bench.procs.start(f"medic-{tag}", [*worker_cmd(QUEUE, s.concurrency, f"medic-{tag}"), *flags])
    )
    plain_w = common.start_plain_worker(bench.procs, f"plain-{tag}", QUEUE, s.concurrency, *flags)
    groups = {"medic_worker_main": [medic_w.pid], "plain_worker_main": [plain_w.pid]}
    meter = common.CpuMeter(lambda: {**groups, "medic_worker_children": medic_w.children(),
                              "plain_worker_children": plain_w.children(), **shared_groups()})  # fmt: skip
    sides: dict[str, Side] = {
        "medic": lambda warm_up: medic_drain(bench, s.e2e_jobs // (10 if warm_up else 1)),
        "plain": lambda warm_up: plain_drain(bench, s.e2e_jobs // (10 if warm_up else 1)),
    }
    done = bench.alternate(sides, meter)
    bench.stop(plain_w, medic_w)
    how = {
        "unit": "jobs/s from the first publish to the last completion the worker child records",
        "jobs_per_run": s.e2e_jobs,
        "workers": f"one a side, prefork -c {s.concurrency}, prefetch 1, acks_late",
        "task_events": "on (-E) on both workers" if events else "off (no -E) on both workers",
    }
    out = report(done, how, {"jobs_per_s": 1}, "job", "of")
    for name in done["runs"]:
        out[name]["all_completed"] = all(r["completed"] == r["of"] for r in done["runs"][name])
    out["ratio_medic_vs_plain"] = common.ratio(out["medic"]["jobs_per_s"], out["plain"]["jobs_per_s"], 0.8)
    return out


def main() -> None:
    args = common.options(__doc__, quick=False, only="enqueue,http,e2e")
    only, sizes = set(args.only.split(",")), QUICK if args.quick else FULL
    started = time.monotonic()
    report: dict[str, Any] = {
        **common.header("throughput"),
        "mode": "quick" if args.quick else "full",
        "statistic": "median of the alternating runs (best also given); ratios = medic / plain of each",
        "sizes": asdict(sizes),
        "medic_settings": "MEDIC_PROFILE=production defaults but for the bench queue's watermark and the "
        "tenant quota, set above the most one measurement enqueues (admission and the quota are still checked "
        "on every enqueue); PostgreSQL 127.0.0.1:5432, Redis 127.0.0.1:6379/0",
    }
    with MedicRun("production", extra_env=ROOM_FOR_ONE_MEASUREMENT) as medic:
        bench = Bench(sizes, medic)
        if "enqueue" in only:
            report["enqueue"] = enqueue(bench)
        if "http" in only:
            report["http"] = http(bench)
        if "e2e" in only:
            report["end_to_end"] = {"events_off": e2e(bench, False), "events_on": e2e(bench, True)}
    report |= {"logs": str(medic.log_dir), "elapsed_s": round(time.monotonic() - started, 1)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
