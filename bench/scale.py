"""Scale: every control loop and the API's reads stay flat as the ledger grows.

    .venv/bin/python -m bench.scale                                   # 10k, 100k, 1M; 100k jobs for RSS
    .venv/bin/python -m bench.scale --sizes 2000,10000 --rss-jobs 200 # the smoke test's sizes

One ledger grown in place (bench/scale_fill.py). At each size: one run of every control loop in
process (the body of its Celery task), and four API reads over HTTP against a real uvicorn, each
op timed several times and its answer checked. Then, at the largest size, one prune run, and the
resident memory of the API and a worker over real jobs. The targets are below; what they mean and
the committed run are in docs/benchmarks.md. Prints one JSON object.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import sqlalchemy as sa

from bench import scale_fill as fill
from bench.common import ROOT, MedicRun, header, load_check, options, vm_rss_mb
from worker.ledger import db
from worker.testing.processes import Proc

FLAT_RATIO = 2.0  # p50 at the largest size within this of the smallest's ...
CEILING_MS = 100.0  # ... and under this
PRUNE_FACTOR = 10.0  # prune deletes jobs at least this many times the end-to-end rate
RSS_GROWTH = 0.2  # RSS after all the jobs within this of after a tenth
LOOP_REPS = 11
HTTP_REPS = 31
LIST_LIMIT = 50
RSS_QUEUE = "bench-scale-rss"
RSS_BATCH = 100
RSS_BACKLOG = 2000  # at most this many submitted and not yet finished: no shedding, a bounded queue

# What each loop must report at every run: the planted jobs it acts on, the queues it walks.
LOOPS: dict[str, dict[str, int]] = {
    "recover_stuck": {"requeued": fill.PROBLEMS_EACH, "dead": 0, "lease_late": 0},
    "enforce_timeouts": {"requeued": fill.PROBLEMS_EACH, "dead": 0},
    "reconcile_broker": {"after_restart": 0, "unpublished": fill.PROBLEMS_EACH, "lost": fill.PROBLEMS_EACH},
    "apply_backpressure": {"queues": len(fill.QUEUES), "shedding": 0},
    "autoscale": {"queues": len(fill.QUEUES), "up": len(fill.QUEUES)},
    "health_and_alerts": {},
}


def timed(
    call: Callable[[], Any], reps: int, warm_ups: int, before: Callable[[], None] = lambda: None
) -> tuple[dict[str, Any], list[Any]]:
    """`warm_ups` untimed calls, then `reps` timed ones, `before()` untimed ahead of each: the
    median and every run in ms, and what each timed call returned."""
    times, results = [], []
    for rep in range(warm_ups + reps):
        before()
        started = time.perf_counter()
        result = call()
        elapsed = (time.perf_counter() - started) * 1000
        if rep >= warm_ups:
            times.append(elapsed)
            results.append(result)
    return {"p50_ms": round(statistics.median(times), 2), "runs_ms": [round(t, 2) for t in times]}, results


def time_loops(broker_prefix: str) -> dict[str, Any]:
    """Every loop's task body, in this process, after one warm-up; before each run the planted jobs
    are put back and the broker's queues emptied. Every run's answer is checked."""
    from worker.control import tasks

    def reset() -> None:
        fill.reset_problems()
        fill.between_runs(broker_prefix)

    out: dict[str, Any] = {}
    for name, expected in LOOPS.items():
        timing, records = timed(tasks.TASKS[name].run, LOOP_REPS, 1, reset)
        answers = [{k: v for k, v in r.items() if k not in ("at", "seconds")} for r in records]
        right = all("skipped" not in a and all(a.get(k) == v for k, v in expected.items()) for a in answers)
        out[name] = {**timing, "answer": answers[-1], "expected": expected, "answered_right": right}
    reset()
    return out


def check_read(name: str, resp: httpx.Response, job_id: str, tenant_queued: int) -> dict[str, Any]:
    """What one read answered, and whether it is what the ledger says it should be."""
    body, ok = resp.json(), resp.status_code == 200
    if name == "get_job":
        return {
            "status": resp.status_code,
            "answered_right": ok and body["id"] == job_id and body["state"] == "succeeded",
        }
    if name == "list_queued":
        rows, states = len(body["jobs"]), sorted({j["state"] for j in body["jobs"]})
        right = ok and rows == min(LIST_LIMIT, tenant_queued) and set(states) <= {"queued"}
        return {"status": resp.status_code, "rows": rows, "states": states, "answered_right": right}
    if name == "queues":
        names = sorted(q["queue"] for q in body["queues"])
        return {"status": resp.status_code, "queues": names, "answered_right": names == sorted(fill.QUEUES)}
    return {"status": resp.status_code, "ready": body["status"], "answered_right": ok and body["status"] == "ok"}


def time_api(url: str, key: str) -> dict[str, Any]:
    """Each read HTTP_REPS times after 3 warm-ups on one keep-alive connection; client-side wall time."""
    fill.reset_problems()
    with db.connect() as conn:
        job_id, tenant_queued = conn.execute(
            sa.text(
                "SELECT (SELECT id FROM jobs WHERE tenant = :t AND state = 'succeeded' ORDER BY created_at DESC"
                " LIMIT 1), (SELECT count(*) FROM jobs WHERE tenant = :t AND state = 'queued')"
            ),
            {"t": fill.BIG_TENANT},
        ).one()
    paths = {
        "get_job": f"/jobs/{job_id}",
        "list_queued": f"/jobs?state=queued&limit={LIST_LIMIT}",
        "queues": "/queues",
        "health_ready": "/health/ready",
    }
    out: dict[str, Any] = {}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=10.0) as client:
        for name, path in paths.items():
            timing, responses = timed(lambda p=path: client.get(p), HTTP_REPS, 3)
            out[name] = {**timing, "path": path, "answer": check_read(name, responses[-1], str(job_id), tenant_queued)}
    return out


def measure_size(size: int, have: int, url: str, key: str, broker_prefix: str) -> dict[str, Any]:
    """Grow the ledger to `size` jobs, settle it, then time every op."""
    out: dict[str, Any] = {"size": size, "fill_s": fill.grow(have + 1, size), "settle_s": fill.settle()}
    out["ledger"] = fill.counts()
    out["load_before"] = load_check()
    out["loops"] = time_loops(broker_prefix)
    out["api"] = time_api(url, key)
    out["load_after"] = load_check()
    return out


def flatness(per_size: list[dict[str, Any]]) -> dict[str, Any]:
    """Per op: p50 at each size, largest / smallest, and whether it meets the target."""
    table: dict[str, Any] = {}
    for group in ("loops", "api"):
        for op in per_size[0][group]:
            lo, hi = per_size[0][group][op]["p50_ms"], per_size[-1][group][op]["p50_ms"]
            ratio = round(hi / lo, 2) if lo else None
            table[op] = {
                "p50_ms_by_size": {str(s["size"]): s[group][op]["p50_ms"] for s in per_size},
                "ratio_largest_to_smallest": ratio,
                "meets_target": ratio is not None and ratio <= FLAT_RATIO and hi <= CEILING_MS,
                "answered_right_at_every_size": all(
                    s[group][op].get("answered_right") or s[group][op]["answer"]["answered_right"] for s in per_size
                ),
            }
    return table


def committed_e2e_rate() -> float:
    """Jobs/s end to end in the committed throughput run (docs/bench/throughput.json, events off,
    medic, median): the intake prune must outpace PRUNE_FACTOR times over."""
    throughput = json.loads((ROOT / "docs" / "bench" / "throughput.json").read_text())
    return float(throughput["end_to_end"]["events_off"]["medic"]["jobs_per_s"]["median"])


def prune_run() -> dict[str, Any]:
    """One prune run (the loop's function, its default budget) on the expired rows, against the
    end-to-end rate of docs/bench/throughput.json (events off, median).

    The loop is called with the same `now` the expected count used: the Celery task reads the
    clock itself, a moment later, by which time another filled row may have crossed the cutoff."""
    from worker.clock import utcnow
    from worker.control.prune import prune
    from worker.settings import get_settings

    e2e = committed_e2e_rate()
    events_before, now = fill.counts()["events"], utcnow()
    expected = fill.expired_count(now, get_settings().retention_days)
    started = time.perf_counter()
    deleted = prune(now).get("deleted", 0)
    elapsed = time.perf_counter() - started
    events_deleted = events_before - fill.counts()["events"]
    rate = deleted / elapsed
    return {
        "expired_before": expected,
        "deleted": deleted,
        "events_deleted": events_deleted,
        "deleted_exactly_the_expired": deleted == expected["jobs"] and events_deleted == expected["events"],
        "seconds": round(elapsed, 3),
        "jobs_per_s": round(rate, 1),
        "e2e_jobs_per_s": e2e,
        "ratio_to_e2e": round(rate / e2e, 1),
        "target_ratio": PRUNE_FACTOR,
        "meets_target": rate >= PRUNE_FACTOR * e2e,
    }


def finished_rss_jobs() -> int:
    with db.connect() as conn:
        query = "SELECT count(*) FROM jobs WHERE queue = :q AND state IN ('succeeded', 'dead')"
        return int(conn.scalar(sa.text(query), {"q": RSS_QUEUE}) or 0)


def run_rss_jobs(client: httpx.Client, submitted: int, target: int, deadline: float) -> tuple[int, int]:
    """Submit in batches through the API, the backlog bounded, until `target` jobs are finished
    (or the deadline); returns (submitted, finished)."""
    echo = {"type": "examples.echo", "args": {"message": "x"}, "queue": RSS_QUEUE}
    finished = finished_rss_jobs()
    while finished < target and time.monotonic() < deadline:
        if submitted < target and submitted - finished < RSS_BACKLOG:
            n = min(RSS_BATCH, target - submitted)
            resp = client.post("/jobs/batch", json={"jobs": [echo] * n})
            if resp.status_code == 202:
                submitted += n
                client.get(f"/jobs/{resp.json()['jobs'][0]['id']}")  # the read path too
            else:
                time.sleep(0.2)
        else:
            time.sleep(0.1)
        finished = finished_rss_jobs()
    return submitted, finished


def rss_check(medic: MedicRun, api: Proc, url: str, key: str, jobs: int, cap_s: float) -> dict[str, Any]:
    """`jobs` no-op jobs through the API (POST /jobs/batch) and one worker (prefork -c 2); the VmRSS
    of the API process and of each worker child after a tenth of them and after all. Growth
    between the two is a leak, or a cache without a bound."""
    worker = medic.procs.worker("scale-rss", RSS_QUEUE, 2)
    children = worker.children()
    api_pid = (api.children() or [api.pid])[0]  # uvicorn --workers 1 serves in-process
    points: dict[str, Any] = {}
    submitted, started = 0, time.monotonic()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30.0) as client:
        for label, target in (("after_first_tenth", max(1, jobs // 10)), ("after_all", jobs)):
            submitted, finished = run_rss_jobs(client, submitted, target, started + cap_s)
            points[label] = {
                "jobs_finished": finished,
                "elapsed_s": round(time.monotonic() - started, 1),
                "api_rss_mb": vm_rss_mb(api_pid),
                "worker_children_rss_mb": {str(pid): vm_rss_mb(pid) for pid in worker.children()},
                "worker_main_rss_mb": vm_rss_mb(worker.pid),
                "load": load_check(),
            }
    first, last = points["after_first_tenth"], points["after_all"]
    api_growth = round(last["api_rss_mb"] / first["api_rss_mb"] - 1, 3)
    child_growth = {
        pid: round(last["worker_children_rss_mb"][pid] / mb - 1, 3)
        for pid, mb in first["worker_children_rss_mb"].items()
        if pid in last["worker_children_rss_mb"]
    }
    all_finished = last["jobs_finished"] >= jobs
    same_children = sorted(worker.children()) == sorted(children)
    return {
        "jobs": jobs,
        **points,
        "all_finished": all_finished,
        "same_worker_children_throughout": same_children,
        "api_growth": api_growth,
        "worker_child_growth": child_growth,
        "target_growth": RSS_GROWTH,
        "meets_target": all_finished
        and same_children
        and abs(api_growth) <= RSS_GROWTH
        and bool(child_growth)
        and max(child_growth.values()) <= RSS_GROWTH,
    }


def main() -> None:
    args = options(__doc__, sizes="10000,100000,1000000", rss_jobs=100_000, rss_cap_s=900.0, note="")
    sizes = [int(s) for s in args.sizes.split(",")]
    assert sizes == sorted(sizes) and len(sizes) >= 2, "at least two ascending sizes"
    started = time.monotonic()
    medic = MedicRun("production", run=f"scale_{uuid.uuid4().hex[:8]}")
    report: dict[str, Any] = {
        **header("scale"),
        "note": args.note,  # what differs from the code measured, if anything
        "targets": {
            "flat_ratio": FLAT_RATIO,
            "ceiling_ms": CEILING_MS,
            "prune_vs_e2e": PRUNE_FACTOR,
            "rss_growth": RSS_GROWTH,
        },
        "database": medic.db_name,
        "key_prefixes": [medic.key_prefix, medic.broker_prefix],
        "queues": fill.QUEUES,
    }
    with medic:
        fill.register_queues()
        fill.plant_problems()
        api, url = medic.procs.api("scale-api")
        key = medic.api_key(fill.BIG_TENANT, "read,admin,submit")
        per_size = []
        for have, size in zip([0, *sizes], sizes, strict=False):
            per_size.append(measure_size(size, have, url, key, medic.broker_prefix))
            print(f"size {size} done at {time.monotonic() - started:.0f}s", file=sys.stderr)
        report["sizes"] = per_size
        report["flatness"] = flatness(per_size)
        report["all_ops_meet_target"] = all(v["meets_target"] for v in report["flatness"].values())
        report["prune"] = prune_run()
        if args.rss_jobs:
            report["rss"] = rss_check(medic, api, url, key, args.rss_jobs, args.rss_cap_s)
    report["logs"] = str(medic.log_dir)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
