"""The throughput table of docs/benchmarks.md, rendered from committed throughput bench JSONs (one
column per run), so the docs quote them exactly (tests/bench/test_throughput_docs.py compares).

    .venv/bin/python -m bench.throughput_table docs/bench/throughput_before.json \\
        docs/bench/throughput_stop14.json docs/bench/throughput.json
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


def render(columns: list[tuple[str, dict[str, Any]]]) -> str:
    """The table: a row per figure, a column per (title, report), and the target."""
    head = "| | " + " | ".join(f"{title}: medic / plain (ratio)" for title, _ in columns) + " | target |"
    lines = [head, "|---|" + "---|" * (len(columns) + 1)]
    for label, row in ROWS:
        cells = [cell(report, row) for _, report in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {TARGETS.get(row, '')} |")
    return "\n".join(lines)


TITLES = ("before", "stop 14", "now")


def main() -> None:
    paths = sys.argv[1:]
    print(render([(TITLES[i] if len(paths) == 3 else Path(p).stem, json.loads(Path(p).read_text()))
                  for i, p in enumerate(paths)]))  # fmt: skip


if __name__ == "__main__":
    main()
