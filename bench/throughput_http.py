"""Scenario (b): HTTP `POST /jobs` through medic's real API vs a bare FastAPI `apply_async` route.

Both servers are driven by the same bounded thread-pool client on 127.0.0.1, with the CPU of each
process group metered per request; medic's API process is then profiled under the same load.
"""

from __future__ import annotations

import itertools
import os
import statistics
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from bench.profiling import CpuMeter, load_check, pids_named, profile_report, spy, wait_spy
from bench.stats import percentile, ratio, summary
from bench.throughput_env import ECHO_ARGS, HOST, Q_HTTP, Bench, background
from bench.throughput_steps import API_RULES
from worker.testing.processes import Proc, free_port


def _http_load(
    bench: Bench, url: str, body: dict[str, Any], headers: dict[str, str], n: int, seconds: float
) -> dict[str, Any]:
    """At most `n` requests or `seconds`, from `http_threads` keep-alive clients; rate and latency."""
    assert url.startswith(f"http://{HOST}:"), url
    counter = itertools.count()
    deadline = time.monotonic() + seconds

    def client() -> tuple[list[float], Counter[str]]:
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        with httpx.Client(base_url=url, headers=headers, timeout=10.0) as c:
            while time.monotonic() < deadline and next(counter) < n:
                t = time.perf_counter()
                try:
                    resp = c.post("/jobs", json=body)
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] += 1
                    continue
                if resp.status_code in (200, 202):
                    latencies.append(time.perf_counter() - t)
                else:
                    errors[str(resp.status_code)] += 1
        return latencies, errors

    started = time.perf_counter()
    with ThreadPoolExecutor(bench.sizes.http_threads) as pool:
        results = list(pool.map(lambda _: client(), range(bench.sizes.http_threads)))
    elapsed = time.perf_counter() - started
    latencies = sorted(x for lat, _ in results for x in lat)
    errors = sum((e for _, e in results), Counter())
    return {
        "ok": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": (percentile(latencies, 0.5) or 0) * 1000,
        "p99_ms": (percentile(latencies, 0.99) or 0) * 1000,
        "errors": dict(errors),
    }


def http(bench: Bench) -> dict[str, Any]:
    """Both APIs up, a warm-up each, then alternating measured runs; the APIs are stopped after."""
    from worker.ledger import db
    from worker.ledger.apikeys import Scope, create_key

    s = bench.sizes
    with db.begin() as conn:
        key = create_key(conn, "bench", frozenset({Scope.SUBMIT}), name="bench-throughput")
    medic_proc, medic_url = bench.procs.api("medic-api")
    port = free_port()
    plain_url = f"http://{HOST}:{port}"
    plain_argv = [sys.executable, "-m", "uvicorn", "bench.plain_api:app", "--host", HOST, "--port", str(port),
                  "--no-access-log"]  # fmt: skip
    plain_proc = bench.procs.http_server("plain-api", plain_argv, plain_url)
    sides = {
        "medic": (
            medic_url,
            {"type": "examples.echo", "args": ECHO_ARGS, "queue": Q_HTTP},
            {"Authorization": f"Bearer {key}"},
        ),
        "plain": (plain_url, {"type": "plain.noop", "args": {}, "queue": Q_HTTP}, {}),
    }
    bench_pid = os.getpid()
    meter = CpuMeter(
        lambda: {
            "medic_api": [medic_proc.pid],
            "plain_api": [plain_proc.pid],
            "postgres_all": pids_named("postgres"),
            "redis_server": pids_named("redis-server"),
            "bench_client": [bench_pid],
        }
    )
    profile: dict[str, Any] | None = None
    try:
        for url, body, headers in sides.values():
            bench.reset(Q_HTTP)
            _http_load(bench, url, body, headers, s.http_warmup, s.http_s)
        runs: dict[str, list[dict[str, Any]]] = {"medic": [], "plain": []}
        loads: list[dict[str, float]] = []
        for _ in range(s.rounds):
            loads.append(load_check())
            for name, (url, body, headers) in sides.items():
                bench.reset(Q_HTTP)
                meter.start()
                result = _http_load(bench, url, body, headers, s.http_requests, s.http_s)
                result["cpu"] = meter.stop()
                runs[name].append(result)
        if bench.profile:
            profile = _profile_api(bench, medic_proc, *sides["medic"])
        bench.reset(Q_HTTP)
    finally:
        bench.stop(plain_proc)
        bench.stop(medic_proc)
    out: dict[str, Any] = {
        "unit": "requests/s (2xx only), latency ms",
        "client": f"httpx, {s.http_threads} threads with keep-alive, {s.http_requests} requests "
        f"or {s.http_s} s per run, to {HOST} only",
        "order": f"{s.rounds} rounds of medic, plain; empty table and queue before each run",
        "medic_body": sides["medic"][1],
        "plain_endpoint": "bench/plain_api.py: sync FastAPI route, pydantic body, apply_async, no auth",
        "load_before_each_round": loads,
    }
    for name, rs in runs.items():
        out[name] = {
            "rps": summary([x["rps"] for x in rs]),
            "p50_ms": summary([x["p50_ms"] for x in rs], higher_is_better=False, digits=2),
            "p99_ms": summary([x["p99_ms"] for x in rs], higher_is_better=False, digits=2),
            "errors": dict(sum((Counter(x["errors"]) for x in rs), Counter())),
            "raw_runs": [{k: v for k, v in x.items() if k != "cpu"} for x in rs],
            "cpu_ms_per_request_median": {
                group: round(statistics.median(x["cpu"]["cpu_s"][group] * 1000 / max(1, x["ok"]) for x in rs), 3)
                for group in rs[0]["cpu"]["cpu_s"]
                if not group.startswith("plain" if name == "medic" else "medic")
            },
            "api_process_cores_median": statistics.median(
                x["cpu"]["cpu_s"][f"{name}_api"] / x["cpu"]["wall_s"] for x in rs
            ),
            "machine_busy_cores_median": statistics.median(x["cpu"]["machine_busy_cores"] for x in rs),
        }
    out["ratio_rps_medic_vs_plain"] = ratio(out["medic"]["rps"], out["plain"]["rps"], 0.8)
    if profile is not None:
        out["profile_medic_api"] = profile
    return out


def _profile_api(bench: Bench, proc: Proc, url: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    """py-spy (GIL holder) on medic's API process under the same load: where its CPU goes."""
    s = bench.sizes
    out = bench.log_dir / "profile-medic-api.txt"
    bench.reset(Q_HTTP)
    with background(lambda: _http_load(bench, url, body, headers, 100_000, s.profile_s + 2)):
        time.sleep(0.5)
        wait_spy(spy(proc.pid, s.profile_s, out, gil=True), s.profile_s + 20)
    report = profile_report(out, API_RULES, "other (event loop, GC)", top=10, thread=None)
    report["note"] = (
        "samples of whichever thread holds the GIL (py-spy --gil): the API process is one Python process, "
        "so this is where its one core goes; compare cpu_ms_per_request_median"
    )
    return report
