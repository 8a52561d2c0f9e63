"""Flow control (issue 21): fairness between tenants, the dispatcher's cost, and the limits' accuracy.

One private medic (bench/common.py MedicRun, `production` profile) with two bench queues:
`bench-fifo` (not dispatched: today's fast path) and `bench-fair` (MEDIC_DISPATCH_QUEUES: the
dispatcher starts its jobs, max-min fair per tenant). The same processes serve every side: two
workers on both queues (prefork, `--concurrency` each, prefetch multiplier 1, acks_late), the
control worker and beat (the dispatch_held loop). Jobs are the no-op types of bench/flow_jobs.py,
submitted with the library's `enqueue_many` in batches of `--batch`, the same way on every side.
Every figure comes from the ledger (`jobs.created_at / started_at / finished_at`): the wait is
the claim less the accept (`started_at - created_at`; no job is retried, `attempts` recorded).

1. fairness: tenant `a` submits `--a-jobs` then tenant `b` `--b-jobs` into one queue; b's wait
   (p50/p95) and a's rate, FIFO (`bench-fifo`) against fair share (`bench-fair`), and b's jobs
   alone on each queue (the idle reference). Sides alternate, `--rounds` rounds.
2. overhead: `--e2e-jobs` submitted then drained, jobs/s from the first accept to the last
   finish, for (a) no limits on the fast path, (b) a keyed limit of 100 never reached (each job
   its own key), (c) a rate limit of 100000/s, (d) no limits on the dispatched queue; alternating
   after a warm-up of each, median of `--rounds`; each side's ratio to (a).
3. accuracy: `flowbench.rate50` (50/s) for `--rate-seconds` (max starts in any 1 s window), and
   `flowbench.capped` (key limit 3) on the 4 slots (peak concurrent per key from the ledger).

A round that does not finish within its cap is reported (`finished: false`, what it got), never
dropped. Prints one JSON object.

    make bench BENCH=flow                                  # ~10 min -> docs/bench/flow.json
    .venv/bin/python -m bench.flow --quick > /tmp/f.json   # tiny sizes: a smoke test
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
import sqlalchemy as sa

from bench import common
from bench.common import MedicRun

FIFO, FAIR = "bench-fifo", "bench-fair"
QUEUES = (FIFO, FAIR)
WORKERS = 2
UNFINISHED = ("held", "queued", "running", "waiting")

ROWS = """
SELECT tenant, type, state, attempts, created_at, started_at, finished_at, args, result
FROM jobs ORDER BY created_at
"""
COUNTS = "SELECT count(*) FILTER (WHERE state NOT IN ('held', 'queued', 'running', 'waiting')) FROM jobs"


def environment(concurrency: int) -> dict[str, str]:
    """The run's settings beyond the profile: the bench's jobs loaded, one queue dispatched, and
    room for the most one measurement submits (admission and the quota are still checked)."""
    room = [1_000_000, 500_000]
    return {
        "MEDIC_JOB_MODULES": "worker.examples,bench.flow_jobs",
        "MEDIC_DISPATCH_QUEUES": FAIR,
        "MEDIC_QUEUE_WATERMARKS": json.dumps(dict.fromkeys(QUEUES, room)),
        "MEDIC_TENANT_QUEUED_QUOTA": "1000000",
        "FLOWBENCH_CONCURRENCY": str(concurrency),  # recorded only
    }


class Bench:
    def __init__(self, medic: MedicRun, args: Any) -> None:
        self.medic, self.args = medic, args
        self.r = redis.Redis.from_url(common.REDIS_URL, decode_responses=True)
        self.unfinished: list[dict[str, Any]] = []

    def start(self) -> None:
        from worker.ops.processes import worker_cmd

        procs = self.medic.procs
        for i in range(WORKERS):
            name = f"flow-w{i}"
            common.ready(procs.start(name, worker_cmd(",".join(QUEUES), self.args.concurrency, name)))
        procs.control_plane()

    def reset(self) -> None:
        """An empty ledger, empty rate buckets and empty queues before every measurement."""
        from worker.ledger import db

        with db.begin() as conn:
            conn.execute(sa.text("TRUNCATE jobs, rate_buckets CASCADE"))
        for queue in QUEUES:
            for key in self.r.scan_iter(match=f"{self.medic.broker_prefix}{queue}*", count=1000):
                self.r.delete(key)
        gc.collect()

    def submit(self, type_: str, args: Callable[[int], dict[str, Any]], n: int, queue: str, tenant: str) -> None:
        from worker import JobRequest, enqueue_many

        b = self.args.batch
        for i in range(0, n, b):
            reqs = [JobRequest(type_, args(j), queue=queue) for j in range(i, min(n, i + b))]
            enqueue_many(reqs, tenant=tenant)

    def wait(self, n: int, cap_s: float, what: str) -> bool:
        """Until `n` jobs are terminal, at most `cap_s`; a round that did not finish is noted."""
        from worker.ledger import db

        def done() -> bool:
            with db.connect() as conn:
                return int(conn.execute(sa.text(COUNTS)).scalar_one()) >= n

        finished = common.poll_until(done, cap_s, 0.1)
        if not finished:
            self.unfinished.append({"what": what, "cap_s": cap_s, "terminal": self.terminal()})
        return finished

    def terminal(self) -> int:
        from worker.ledger import db

        with db.connect() as conn:
            return int(conn.execute(sa.text(COUNTS)).scalar_one())

    def rows(self) -> list[Any]:
        from worker.ledger import db

        with db.connect() as conn:
            return list(conn.execute(sa.text(ROWS)).all())


def waits(rows: list[Any], tenant: str) -> list[float]:
    return [(r.started_at - r.created_at).total_seconds() for r in rows if r.tenant == tenant and r.started_at]


def rate(rows: list[Any], tenant: str | None = None) -> float | None:
    """Jobs finished per second, from the first accept to the last finish of those jobs."""
    mine = [r for r in rows if tenant is None or r.tenant == tenant]
    ends = [r.finished_at for r in mine if r.finished_at and r.state == "succeeded"]
    if not ends:
        return None
    span = (max(ends) - min(r.created_at for r in mine)).total_seconds()
    return round(len(ends) / span, 1) if span > 0 else None


def states(rows: list[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r.state] = out.get(r.state, 0) + 1
    return out


# ------------------------------------------------------------------------------------ fairness


def fairness_round(bench: Bench, mode: str) -> dict[str, Any]:
    a = bench.args
    queue = FIFO if mode in ("fifo", "idle_fifo") else FAIR
    a_jobs = 0 if mode.startswith("idle") else a.a_jobs
    bench.reset()
    t0 = time.time()
    if a_jobs:
        bench.submit("flowbench.noop", lambda i: {"n": i}, a_jobs, queue, "a")
    b_at = time.time() - t0
    bench.submit("flowbench.noop", lambda i: {"n": i}, a.b_jobs, queue, "b")
    finished = bench.wait(a_jobs + a.b_jobs, a.cap_s, f"fairness {mode}")
    rows = bench.rows()
    b = waits(rows, "b")
    out = {
        "queue": queue,
        "finished": finished,
        "states": states(rows),
        "max_attempts_seen": max((r.attempts for r in rows), default=0),
        "b_submitted_after_s": round(b_at, 3),
        "b_started": len(b),
        "b_wait_p50_ms": common.percentile_ms(b, 0.5),
        "b_wait_p95_ms": common.percentile_ms(b, 0.95),
        "b_wait_max_ms": common.percentile_ms(b, 1.0),
    }
    if a_jobs:
        out["a_jobs_per_s"] = rate(rows, "a")
        out["a_wait_p50_ms"] = common.percentile_ms(waits(rows, "a"), 0.5)
    return out


def fairness(bench: Bench) -> dict[str, Any]:
    modes = ("idle_fifo", "idle_fair", "fifo", "fair")
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    loads = []
    for _ in range(bench.args.rounds):
        loads.append(common.load_check())
        for mode in modes:
            runs[mode].append(fairness_round(bench, mode))
    out: dict[str, Any] = {
        "a_jobs": bench.args.a_jobs,
        "b_jobs": bench.args.b_jobs,
        "job": "flowbench.noop (returns its argument)",
        "submitted": f"library enqueue_many, batches of {bench.args.batch}: tenant a's jobs, then tenant b's",
        "wait": "ledger started_at - created_at (claim less accept)",
        "load_before_each_round": loads,
    }
    for mode, rs in runs.items():
        figs = ["b_wait_p50_ms", "b_wait_p95_ms"] + ([] if mode.startswith("idle") else ["a_jobs_per_s"])
        out[mode] = {f: common.summary([r[f] for r in rs if r[f] is not None], higher_is_better=f == "a_jobs_per_s")
                     for f in figs}  # fmt: skip
        out[mode]["runs"] = rs
    fair95, idle95 = out["fair"]["b_wait_p95_ms"]["median"], out["idle_fair"]["b_wait_p95_ms"]["median"]
    fifo95, idle_fifo95 = out["fifo"]["b_wait_p95_ms"]["median"], out["idle_fifo"]["b_wait_p95_ms"]["median"]
    out["fair_b_p95_over_idle_fair"] = round(fair95 / idle95, 2) if fair95 and idle95 else None
    out["fair_b_p95_over_idle_fifo"] = round(fair95 / idle_fifo95, 2) if fair95 and idle_fifo95 else None
    out["fifo_b_p95_over_idle_fifo"] = round(fifo95 / idle_fifo95, 2) if fifo95 and idle_fifo95 else None
    out["target"] = "fair b p95 within 2x of idle"
    afifo, afair = out["fifo"]["a_jobs_per_s"]["median"], out["fair"]["a_jobs_per_s"]["median"]
    out["a_rate_fair_over_fifo"] = round(afair / afifo, 3) if afair and afifo else None
    return out


# ------------------------------------------------------------------------------------ overhead

SIDES: dict[str, tuple[str, str, Callable[[int], dict[str, Any]]]] = {
    "a_fast_path": ("flowbench.noop", FIFO, lambda i: {"n": i}),
    "b_keyed_limit_100": ("flowbench.keyed", FIFO, lambda i: {"n": i, "k": f"k{i}"}),
    "c_rate_100000_per_s": ("flowbench.rated", FIFO, lambda i: {"n": i}),
    "d_dispatched_queue": ("flowbench.noop", FAIR, lambda i: {"n": i}),
}


def overhead_round(bench: Bench, side: str, n: int) -> dict[str, Any]:
    type_, queue, args = SIDES[side]
    bench.reset()
    bench.submit(type_, args, n, queue, "a")
    finished = bench.wait(n, bench.args.cap_s, f"overhead {side} n={n}")
    rows = bench.rows()
    return {"finished": finished, "jobs": n, "states": states(rows), "jobs_per_s": rate(rows)}


def overhead(bench: Bench) -> dict[str, Any]:
    n = bench.args.e2e_jobs
    warm_up = {side: overhead_round(bench, side, max(10, n // 10)) for side in SIDES}
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    loads = []
    for _ in range(bench.args.rounds):
        loads.append(common.load_check())
        for side in SIDES:
            runs[side].append(overhead_round(bench, side, n))
    out: dict[str, Any] = {
        "unit": "jobs/s, first accept to last finish (ledger), succeeded jobs only",
        "jobs_per_run": n,
        "sides": {side: {"type": t, "queue": q} for side, (t, q, _) in SIDES.items()},
        "submitted": f"library enqueue_many, batches of {bench.args.batch}, one tenant",
        "note": "a round that did not finish within cap_s gives the rate of what succeeded by then",
        "load_before_each_round": loads,
        "warm_up": warm_up,
    }
    for side, rs in runs.items():
        out[side] = {"jobs_per_s": common.summary([r["jobs_per_s"] for r in rs if r["jobs_per_s"]]), "runs": rs}
    base = out["a_fast_path"]["jobs_per_s"]["median"]
    out["ratio_to_a_median"] = {
        side: round(out[side]["jobs_per_s"]["median"] / base, 3) if base and out[side]["jobs_per_s"]["median"] else None
        for side in SIDES
    }
    out["target"] = "dispatcher cost <= 10 % (ratio >= 0.9) or shown"
    return out


# ------------------------------------------------------------------------------------ accuracy


def max_in_window(times: list[dt.datetime], window_s: float = 1.0) -> int:
    """The most starts in any window of `window_s` (each window starting at a start)."""
    ts = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(ts):
        while (t - ts[j]).total_seconds() >= window_s:
            j += 1
        best = max(best, i - j + 1)
    return best


def peak_overlap(intervals: Sequence[tuple[Any, Any]]) -> int:
    """The most intervals open at once (an end at the same instant as a start closes first)."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    peak = cur = 0
    for _, d in edges:
        cur += d
        peak = max(peak, cur)
    return peak


def accuracy_rate(bench: Bench) -> dict[str, Any]:
    a = bench.args
    n = 50 * a.rate_seconds
    bench.reset()
    bench.submit("flowbench.rate50", lambda i: {"n": i}, n, FIFO, "a")
    finished = bench.wait(n, a.rate_seconds * 1.5 + 30, "accuracy rate 50/s")
    rows = bench.rows()
    starts = sorted(r.started_at for r in rows if r.started_at)
    span = (starts[-1] - starts[0]).total_seconds() if len(starts) > 1 else None
    per_second: dict[int, int] = {}
    for t in starts:
        k = int((t - starts[0]).total_seconds())
        per_second[k] = per_second.get(k, 0) + 1
    return {
        "type": "flowbench.rate50 (rate_limit 50/s), queue bench-fifo",
        "jobs": n,
        "finished": finished,
        "states": states(rows),
        "started": len(starts),
        "first_to_last_start_s": round(span, 3) if span else None,
        "mean_starts_per_s": round((len(starts) - 1) / span, 2) if span else None,
        "max_starts_in_any_1s_window": max_in_window(starts),
        "starts_per_whole_second_min_max": [min(per_second.values()), max(per_second.values())] if per_second else None,
        "max_attempts_seen": max((r.attempts for r in rows), default=0),
    }


def accuracy_keyed(bench: Bench) -> dict[str, Any]:
    a = bench.args
    keys = ("k1", "k2")
    n = a.keyed_jobs
    bench.reset()
    bench.submit("flowbench.capped", lambda i: {"n": i, "k": keys[i % 2], "seconds": a.keyed_sleep}, n, FIFO, "a")
    finished = bench.wait(n, a.cap_s, "accuracy keyed limit 3")
    rows = bench.rows()
    per_key: dict[str, list[tuple[dt.datetime, dt.datetime]]] = {k: [] for k in keys}
    own: dict[str, list[tuple[float, float]]] = {k: [] for k in keys}  # the job's own clock, a cross-check
    for r in rows:
        if r.started_at and r.finished_at:
            per_key[r.args["k"]].append((r.started_at, r.finished_at))
        if r.result:
            own[r.args["k"]].append((r.result["started"], r.result["ended"]))
    all_intervals = [iv for ivs in per_key.values() for iv in ivs]
    return {
        "type": f"flowbench.capped (concurrency_key k, limit 3), sleeps {a.keyed_sleep} s, queue bench-fifo",
        "jobs": n,
        "keys": list(keys),
        "slots": WORKERS * a.concurrency,
        "finished": finished,
        "states": states(rows),
        "interval": "ledger started_at (claim) to finished_at",
        "peak_concurrent_per_key": {k: peak_overlap(ivs) for k, ivs in per_key.items()},
        "peak_concurrent_all_keys": peak_overlap(all_intervals),
        "peak_concurrent_per_key_own_times": {k: peak_overlap(ivs) for k, ivs in own.items()},
    }


def main() -> None:
    args = common.options(
        __doc__, quick=False, rounds=3, concurrency=2, batch=100, a_jobs=2000, b_jobs=20, e2e_jobs=1000,
        rate_seconds=60, keyed_jobs=60, keyed_sleep=0.1, cap_s=90.0, only="fairness,overhead,accuracy",
    )  # fmt: skip
    if args.quick:
        quick = {"rounds": 1, "a_jobs": 200, "e2e_jobs": 100, "rate_seconds": 5, "keyed_jobs": 20, "cap_s": 30.0}
        vars(args).update(quick)
    only = set(args.only.split(","))
    started = time.monotonic()
    report: dict[str, Any] = {
        **common.header("flow"),
        "mode": "quick" if args.quick else "full",
        "statistic": "median of the alternating rounds (best and every round also given)",
        "settings": {
            "profile": "production",
            "workers": f"{WORKERS} medic workers on {FIFO},{FAIR}, prefork -c {args.concurrency} each "
            f"({WORKERS * args.concurrency} slots), prefetch multiplier 1, acks_late; control worker and beat",
            "MEDIC_DISPATCH_QUEUES": FAIR,
            "dispatch_window_and_period": "defaults (MEDIC_DISPATCH_WINDOW 16, MEDIC_DISPATCH_PERIOD_SECONDS 1)",
            "watermarks_and_quota": "set above the most one measurement submits (still checked on every accept)",
            "args": {k: v for k, v in vars(args).items()},
            "infrastructure": "PostgreSQL 127.0.0.1:5432, Redis 127.0.0.1:6379/0, shared with other runs",
        },
    }
    with MedicRun("production", extra_env=environment(args.concurrency)) as medic:
        bench = Bench(medic, args)
        bench.start()
        if "fairness" in only:
            report["fairness"] = fairness(bench)
        if "overhead" in only:
            report["overhead"] = overhead(bench)
        if "accuracy" in only:
            report["accuracy"] = {"load_before": common.load_check(), "rate_50_per_s": accuracy_rate(bench),
                                  "keyed_limit_3": accuracy_keyed(bench)}  # fmt: skip
        bench.reset()
    report |= {"unfinished_rounds": bench.unfinished, "logs": str(medic.log_dir)}
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
