"""Throughput: medic vs plain Celery, same run, same Redis, same machine.

    (a) enqueue rate from Python: medic `enqueue()` one job per call and `enqueue_many()` in
        batches, vs plain Celery `apply_async` in a loop (`plain.noop`);
    (b) HTTP `POST /jobs` through medic's real API (uvicorn) vs a bare FastAPI endpoint that only
        calls `apply_async` (bench/plain_api.py), driven by the same bounded thread-pool client;
    (c) end to end: N no-op jobs through one worker each (prefork, same concurrency, acks_late),
        from the first publish to the last completion (medic: the ledger's finished_at; plain:
        each task records its completion time in Redis);
    then py-spy profiles of medic's single and batch enqueue and of its worker processes during
    (c) (wall clock, I/O waits included), of its API process during (b) (the GIL holder), and the
    CPU each process group spends per job in (b) and (c), summed up in "where_time_goes".

    .venv/bin/python -m bench.throughput            # full run, about 3 minutes on 2 cores
    .venv/bin/python -m bench.throughput --quick    # tiny sizes, about 25 s: a smoke test

Sides run alternately (medic, plain, medic, plain), each after a warm-up; the ledger table and
the queues are emptied before every measurement. Every load loop is bounded in count and time and
talks only to 127.0.0.1. Prints one JSON object. Needs PostgreSQL and Redis on 127.0.0.1 (like the
tests); creates and drops its own database `medic_bench_<random>` and deletes its Redis keys
(prefixes `bench<run>:`, `benchb<run>:`, `bench-plain-<run>:`) at the end.

This module is the command line and the report (orchestration, JSON, the "where_time_goes"
digest); the scenarios are bench/throughput_enqueue.py, _http.py and _e2e.py, their shared run in
bench/throughput_env.py, the numbers in bench/stats.py and the measuring in bench/profiling.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.medic_run import ROOT
from bench.throughput_e2e import e2e
from bench.throughput_enqueue import enqueue, profile_enqueue
from bench.throughput_env import FULL, QUICK, Bench
from bench.throughput_http import http


def git_state() -> dict[str, Any]:
    """The code measured: HEAD, and the files outside bench/ that differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout

    changed = [line[3:] for line in git("status", "--porcelain").splitlines() if len(line) > 3]
    return {
        "head": git("rev-parse", "--short", "HEAD").strip(),
        "uncommitted_files_outside_bench": [f for f in changed if not f.startswith("bench/")],
    }


def main() -> None:
    """Every scenario in order on one Bench, then one JSON object on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Tiny sizes: a smoke test of every step.")
    parser.add_argument("--skip-profile", action="store_true", help="No py-spy profiles.")
    parser.add_argument(
        "--only", default="enqueue,http,e2e", help="Comma-separated scenarios to run (enqueue, http, e2e)."
    )
    args = parser.parse_args()
    only = set(args.only.split(","))
    sizes = QUICK if args.quick else FULL
    log_dir = Path(tempfile.mkdtemp(prefix="medic-bench-"))
    started = time.monotonic()
    bench = Bench(sizes, log_dir, profile=not args.skip_profile)
    report: dict[str, Any] = {
        "bench": "throughput",
        "mode": "quick" if args.quick else "full",
        "statistic": "median of the alternating runs (best also given); ratios = medic / plain of each",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_at_start": os.getloadavg()},
        "code": git_state(),
        "sizes": asdict(sizes),
        "medic_settings": "MEDIC_PROFILE=production defaults; PostgreSQL 127.0.0.1:5432, Redis 127.0.0.1:6379/0",
    }
    try:
        bench.setup()
        if "enqueue" in only:
            report["enqueue"] = enqueue(bench)
            if not args.skip_profile:
                for mode in ("medic_single", "medic_batch"):
                    rate = report["enqueue"][mode]["median"]
                    report[f"profile_enqueue_{mode.removeprefix('medic_')}"] = profile_enqueue(bench, mode, rate)
        if "http" in only:
            report["http"] = http(bench)
        if "e2e" in only:
            report["end_to_end"] = e2e(bench)
    finally:
        bench.teardown()
    report["where_time_goes"] = where_time_goes(report)
    report["logs"] = str(log_dir)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(report, indent=2))


def _top_lines(section: dict[str, Any] | None, n: int = 4) -> list[str]:
    """The `n` largest steps of a profile as one line each: share, step, ms/job, dominant kind of work."""
    lines = []
    for r in (section or {}).get("by_step", [])[:n]:
        notes = [f"{r['ms_per_job']} ms/job"] if "ms_per_job" in r else []
        notes += [f"{share:.0%} {kind}" for kind, share in r.get("of_which", {}).items() if share >= 0.3][:1]
        lines.append(f"{r['share']:.0%} {r['what']}" + (f" [{'; '.join(notes)}]" if notes else ""))
    return lines


def where_time_goes(report: dict[str, Any]) -> dict[str, Any]:
    """The few largest costs of each profile, in one place."""
    e2e = report.get("end_to_end", {}).get("events_off", {})
    profiles = e2e.get("profiles", {})
    sections: list[tuple[str, dict[str, Any] | None, int]] = [
        ("enqueue_single (bench process, wall clock)", report.get("profile_enqueue_single"), 6),
        ("enqueue_batch (bench process, wall clock)", report.get("profile_enqueue_batch"), 5),
        ("http medic API process (GIL holder)", report.get("http", {}).get("profile_medic_api"), 7),
    ]
    for side in ("medic", "plain"):
        p = profiles.get(side, {})
        sections.append((f"end_to_end {side} worker children (wall clock)", p.get("children_main_thread"), 4))
        sections.append((f"end_to_end {side} worker main process (wall clock)", p.get("main_process"), 4))
    out: dict[str, Any] = {title: _top_lines(section, n) for title, section, n in sections if section}
    for side in ("medic", "plain"):
        if side in e2e:
            out[f"end_to_end (events off) {side} CPU ms per job by process group"] = e2e[side]["cpu_ms_per_job_median"]
    http = report.get("http", {})
    for side in ("medic", "plain"):
        if side in http:
            out[f"http {side} CPU ms per request by process group"] = http[side]["cpu_ms_per_request_median"]
    return out


if __name__ == "__main__":
    main()
