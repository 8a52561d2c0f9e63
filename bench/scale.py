"""Scale: every control loop and the API's reads stay flat as the ledger grows (issue 9).

    .venv/bin/python -m bench.scale                                   # 10k, 100k, 1M; 100k jobs for RSS
    .venv/bin/python -m bench.scale --sizes 2000,10000 --rss-jobs 200 # the smoke test's sizes

One ledger, grown in place to each size (bench/scale_fill.py: set-based INSERT ... SELECT
generate_series, jobs and their events in one statement; mostly finished, 1 % queued, 0.5 %
running, eight tenants, four queues, finished jobs spread over 40 days). At each size, after
VACUUM ANALYZE: one run of every control loop, timed in process (the body of its Celery task),
and GET /jobs/{id}, GET /jobs?state=queued&limit=50, GET /queues and GET /health/ready over HTTP
against a real uvicorn (bench/scale_ops.py); median of several runs, every run in the JSON. Then
at the largest size one prune run on the expired quarter (jobs deleted per second, against the
end-to-end rate of docs/bench/throughput.json), and the memory check (bench/scale_rss.py): real
no-op jobs through the API and a real worker, VmRSS after a tenth of them and after all.

Target per op: p50 at the largest size within 2x of the first size's, and under 100 ms. Prune at
least 10x the end-to-end rate. RSS after all jobs within 20 % of after a tenth.

Needs PostgreSQL and Redis on 127.0.0.1; creates and drops its own database
`medic_bench_scale_<random>` and deletes its Redis key prefixes at the end. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import ROOT, MedicRun, header, load_check
from bench.scale_fill import (
    QUEUES,
    counts,
    expired_count,
    grow,
    plant_problems,
    register_queues,
    restamp_queued,
    vacuum_analyze,
)
from bench.scale_ops import ApiTarget, time_api, time_loops
from bench.scale_rss import rss_check
from worker.testing.processes import Processes

FLAT_RATIO = 2.0
CEILING_MS = 100.0
PRUNE_FACTOR = 10.0
E2E_JSON = ROOT / "docs" / "bench" / "throughput.json"


def _e2e_rate() -> float | None:
    """medic's end-to-end rate, events off, median (docs/bench/throughput.json)."""
    try:
        return float(json.loads(E2E_JSON.read_text())["end_to_end"]["events_off"]["medic"]["jobs_per_s"]["median"])
    except (OSError, KeyError, ValueError):
        return None


def _api_key() -> str:
    from worker.ledger import db
    from worker.ledger.apikeys import Scope, create_key

    with db.begin() as conn:
        return create_key(conn, "tenant-0", frozenset({Scope.READ, Scope.ADMIN, Scope.SUBMIT}), name="bench-scale")


def measure_size(size: int, have: int, problems: Any, api: ApiTarget, broker_prefix: str) -> dict[str, Any]:
    """Grow the ledger to `size` jobs, VACUUM ANALYZE, then time every op."""
    out: dict[str, Any] = {"size": size, **grow(have + 1, size)}
    restamp_queued()  # before the VACUUM, which clears the old row versions it leaves
    out["vacuum_analyze_s"] = vacuum_analyze()
    out["ledger"] = counts()
    out["load_before"] = load_check()
    out["loops"] = time_loops(problems, broker_prefix)
    out["api"] = time_api(api, problems)
    out["load_after"] = load_check()
    return out


def flatness(per_size: list[dict[str, Any]]) -> dict[str, Any]:
    """Per op: p50 at each size, largest / smallest, and whether it meets the target."""
    first, last = per_size[0], per_size[-1]
    table: dict[str, Any] = {}
    for group in ("loops", "api"):
        for op in first[group]:
            p50 = {str(s["size"]): s[group][op]["p50_ms"] for s in per_size}
            lo, hi = first[group][op]["p50_ms"], last[group][op]["p50_ms"]
            ratio = round(hi / lo, 2) if lo else None
            answered = all(
                (s[group][op].get("answered_right") or s[group][op].get("answer", {}).get("answered_right"))
                for s in per_size
            )
            table[op] = {
                "p50_ms_by_size": p50,
                "ratio_largest_to_smallest": ratio,
                "meets_target": ratio is not None and ratio <= FLAT_RATIO and hi <= CEILING_MS,
                "answered_right_at_every_size": answered,
            }
    return table


def prune_run() -> dict[str, Any]:
    """One prune run (the loop's function, its default budget) on the expired rows; jobs/s.

    The loop is called with the same `now` the expected count used: the Celery task reads the
    clock itself, a moment later, by which time another filled row may have crossed the cutoff."""
    from worker.clock import utcnow
    from worker.control.prune import prune
    from worker.settings import get_settings

    before = counts()
    now = utcnow()
    expected = expired_count(now, get_settings().retention_days)
    started = time.perf_counter()
    record = prune(now)
    elapsed = time.perf_counter() - started
    after = counts()
    rate = record.get("deleted", 0) / elapsed if elapsed else 0.0
    e2e = _e2e_rate()
    return {
        "expired_before": expected,
        "deleted": record.get("deleted"),
        "events_deleted": before["events"] - after["events"],
        "deleted_exactly_the_expired": record.get("deleted") == expected["jobs"]
        and before["events"] - after["events"] == expected["events"],
        "seconds": round(elapsed, 3),
        "jobs_per_s": round(rate, 1),
        "rows_per_s_jobs_and_events": round(
            (before["jobs"] - after["jobs"] + before["events"] - after["events"]) / elapsed, 1
        ),
        "e2e_jobs_per_s": e2e,
        "e2e_source": "docs/bench/throughput.json end_to_end.events_off.medic.jobs_per_s.median",
        "ratio_to_e2e": round(rate / e2e, 1) if e2e else None,
        "target_ratio": PRUNE_FACTOR,
        "meets_target": bool(e2e) and rate >= PRUNE_FACTOR * (e2e or 0),
        "ledger_after": after,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="Comma-separated ledger sizes, ascending.")
    parser.add_argument("--rss-jobs", type=int, default=100_000, help="Jobs run for the RSS check (0: skip).")
    parser.add_argument("--rss-cap-s", type=float, default=900.0, help="Longest the RSS check may run.")
    parser.add_argument("--note", default="", help="Recorded in the JSON: what differs from the code measured.")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    assert sizes == sorted(sizes) and len(sizes) >= 2, "at least two ascending sizes"
    started = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix="medic-bench-scale-"))
    run = MedicRun("production", run=f"scale_{uuid.uuid4().hex[:8]}")
    procs = Processes(run.env, log_dir)
    report: dict[str, Any] = {
        **header("scale"),
        "note": args.note,
        "statistic": "p50 = median of the timed runs (every run in runs_ms); loops in process, API over HTTP",
        "targets": {
            "flat_ratio": FLAT_RATIO,
            "ceiling_ms": CEILING_MS,
            "prune_vs_e2e": PRUNE_FACTOR,
            "rss_growth": 0.2,
        },
        "database": run.db_name,
        "key_prefixes": [run.key_prefix, run.broker_prefix],
        "medic_settings": "MEDIC_PROFILE=production defaults; PostgreSQL 127.0.0.1:5432, Redis 127.0.0.1:6379/0",
        "queues": QUEUES,
    }
    try:
        run.create()
        register_queues()
        problems = plant_problems()
        api_proc, url = procs.api("scale-api")
        key = _api_key()
        have, per_size = 0, []
        for size in sizes:
            per_size.append(measure_size(size, have, problems, ApiTarget(url, key), run.broker_prefix))
            have = size
            print(f"size {size} done at {time.monotonic() - started:.0f}s", file=sys.stderr)
        report["sizes"] = per_size
        report["flatness"] = flatness(per_size)
        report["all_ops_meet_target"] = all(v["meets_target"] for v in report["flatness"].values())
        report["prune"] = prune_run()
        if args.rss_jobs:
            report["rss"] = rss_check(procs, (api_proc, url), key, args.rss_jobs, args.rss_cap_s)
    finally:
        procs.stop_all()
        run.drop()
    report["logs"] = str(log_dir)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
