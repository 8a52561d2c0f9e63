"""The Scale section's figures in docs/benchmarks.md, rendered from a scale bench JSON, so the docs
quote the committed run exactly (tests/bench/test_scale_docs.py compares them).

    .venv/bin/python -m bench.scale_table docs/bench/scale.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

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


def render(report: dict[str, Any]) -> str:
    parts = [flat_table(report), "", prune_line(report)]
    if "rss" in report:
        parts += ["", rss_line(report)]
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(json.loads(Path(sys.argv[1]).read_text())))
