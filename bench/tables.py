"""The docs' tables, rendered from committed bench JSONs, so docs/benchmarks.md quotes them exactly
(tests/bench/test_figures.py compares):

    .venv/bin/python -m bench.tables throughput docs/bench/throughput_before.json \\
        docs/bench/throughput_stop15.json docs/bench/throughput.json
    .venv/bin/python -m bench.tables scale docs/bench/scale.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROWS: list[tuple[str, str]] = [
    ("(a) `enqueue()` vs `apply_async()`", "single"),
    ("(a) `enqueue_many()` of 100 vs plain `producer.batch()` of 100", "batch"),
    ("(b) `POST /jobs`, 8 client threads, vs bare FastAPI + `apply_async`", "http"),
    ("(b) p50 / p99 latency, medic vs plain", "latency"),
    ("(c) 2000 no-op jobs end to end, prefork `-c 2`, acks_late, events off", "events_off"),
    ("(c) the same, events on (`-E` on both)", "events_on"),
    ("(c) medic CPU ms per job, events off: worker main / children / PostgreSQL", "cpu"),
]
TARGETS = {"single": "0.6", "batch": "1.0", "http": "0.8", "events_off": "0.8", "events_on": "0.8"}


def _pair(medic: Any, plain: Any, ratio: Any, unit: str) -> str:
    return f"{medic} / {plain} {unit} ({ratio})"


def cell(report: dict[str, Any], row: str) -> str:
    """One run's figure for one row of the table."""
    enq, http, e2e = report["enqueue"], report["http"], report["end_to_end"]
    if row == "single":
        return _pair(enq["medic_single"]["median"], enq["plain_apply_async"]["median"],
                     enq["ratio_single_vs_plain"]["median"], "jobs/s")  # fmt: skip
    if row == "batch":
        return _pair(enq["medic_batch"]["median"], enq["plain_batch"]["median"],
                     enq["ratio_batch_vs_plain_batch"]["median"], "jobs/s")  # fmt: skip
    if row == "http":
        return _pair(http["medic"]["rps"]["median"], http["plain"]["rps"]["median"],
                     http["ratio_rps_medic_vs_plain"]["median"], "req/s")  # fmt: skip
    if row == "latency":
        m, p = http["medic"], http["plain"]
        return (f"{m['p50_ms']['median']} / {m['p99_ms']['median']} ms vs "
                f"{p['p50_ms']['median']} / {p['p99_ms']['median']} ms")  # fmt: skip
    if row in ("events_off", "events_on"):
        side = e2e[row]
        return _pair(side["medic"]["jobs_per_s"]["median"], side["plain"]["jobs_per_s"]["median"],
                     side["ratio_medic_vs_plain"]["median"], "jobs/s")  # fmt: skip
    cpu = e2e["events_off"]["medic"]["cpu_ms_per_job_median"]
    return f"{cpu['medic_worker_main']} / {cpu['medic_worker_children']} / {cpu['postgres_all']}"


def render_throughput(columns: list[tuple[str, dict[str, Any]]]) -> str:
    """The table: a row per figure, a column per (title, report), and the target."""
    head = "| | " + " | ".join(f"{title}: medic / plain (ratio)" for title, _ in columns) + " | target |"
    lines = [head, "|---|" + "---|" * (len(columns) + 1)]
    for label, row in ROWS:
        cells = [cell(report, row) for _, report in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {TARGETS.get(row, '')} |")
    return "\n".join(lines)


TITLES = ("before", "stop 15", "now")


LABELS = {
    "recover_stuck": "`recover_stuck` (one run, in process)",
    "enforce_timeouts": "`enforce_timeouts`",
    "reconcile_broker": "`reconcile_broker`",
    "apply_backpressure": "`apply_backpressure`",
    "autoscale": "`autoscale`",
    "health_and_alerts": "`health_and_alerts`",
    "get_job": "`GET /jobs/{id}` (HTTP)",
    "list_queued": "`GET /jobs?state=queued&limit=50`",
    "queues": "`GET /queues`",
    "health_ready": "`GET /health/ready`",
}


def _size(n: str) -> str:
    value = int(n)
    return f"{value // 1_000_000}M" if value % 1_000_000 == 0 else f"{value // 1000}k"


def flat_table(report: dict[str, Any]) -> str:
    """op | p50 ms at each size | ratio largest / smallest | target met."""
    sizes = [str(s["size"]) for s in report["sizes"]]
    head = "| op | " + " | ".join(f"{_size(s)} p50 ms" for s in sizes) + f" | {_size(sizes[-1])} / {_size(sizes[0])} |"
    lines = [head + " target met |", "|---|" + "---|" * (len(sizes) + 2)]
    for op, row in report["flatness"].items():
        cells = [str(row["p50_ms_by_size"][s]) for s in sizes]
        met = "yes" if row["meets_target"] else "**no**"
        lines.append(
            f"| {LABELS.get(op, op)} | " + " | ".join(cells) + f" | {row['ratio_largest_to_smallest']} | {met} |"
        )
    return "\n".join(lines)


def prune_line(report: dict[str, Any]) -> str:
    p = report["prune"]
    met = "met" if p["meets_target"] else "**not met**"
    return (
        f"Prune: one run deleted {p['deleted']} expired jobs and {p['events_deleted']} events in {p['seconds']} s: "
        f"{p['jobs_per_s']} jobs/s, {p['ratio_to_e2e']}x the end-to-end rate ({p['e2e_jobs_per_s']} jobs/s); "
        f"target {p['target_ratio']:g}x, {met}."
    )


def rss_line(report: dict[str, Any]) -> str:
    r = report["rss"]
    first, last = r["after_first_tenth"], r["after_all"]
    children = ", ".join(
        f"{mb} -> {last['worker_children_rss_mb'].get(pid)} MB" for pid, mb in first["worker_children_rss_mb"].items()
    )
    met = "met" if r["meets_target"] else "**not met**"
    return (
        f"RSS after {first['jobs_finished']} and after {last['jobs_finished']} jobs: API {first['api_rss_mb']} -> "
        f"{last['api_rss_mb']} MB (growth {r['api_growth']}), worker children {children} "
        f"(growth {', '.join(str(g) for g in r['worker_child_growth'].values())}); "
        f"target within {r['target_growth']}, {met}."
    )


def render_scale(report: dict[str, Any]) -> str:
    parts = [flat_table(report), "", prune_line(report)]
    if "rss" in report:
        parts += ["", rss_line(report)]
    return "\n".join(parts)


def main() -> None:
    kind, paths = sys.argv[1], sys.argv[2:]
    reports = [json.loads(Path(p).read_text()) for p in paths]
    if kind == "scale":
        print(render_scale(reports[0]))
    else:
        titles = TITLES if len(paths) == len(TITLES) else tuple(Path(p).stem for p in paths)
        print(render_throughput(list(zip(titles, reports, strict=True))))


if __name__ == "__main__":
    main()
