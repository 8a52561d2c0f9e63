"""Write deploy/grafana/medic.json, medic's Grafana dashboard, from the panel list below.

    .venv/bin/python deploy/grafana/build.py           # rewrite the file
    .venv/bin/python deploy/grafana/build.py --check   # exit 1 if the file differs

Generated rather than hand-edited so every query is in one readable list, and
tests/deploy/test_live_prometheus.py checks each metric it names against what medic's processes
really serve.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "medic.json"
DS = {"type": "prometheus", "uid": "${datasource}"}

# (row, title, unit, [(expr, legend)])
PANELS: list[tuple[str, str, str, list[tuple[str, str]]]] = [
    ("Queues", "Queue depth and watermarks", "short", [
        ("max by (queue) (medic_queue_depth)", "{{queue}} depth"),
        ("max by (queue) (medic_queue_high_watermark)", "{{queue}} high"),
        ("max by (queue) (medic_queue_low_watermark)", "{{queue}} low"),
    ]),
    ("Queues", "Admission: shedding (1 = 429)", "short", [
        ("max by (queue) (medic_queue_shedding)", "{{queue}}"),
        ("sum by (queue, reason) (rate(medic_jobs_rejected_total[5m]))", "rejected {{queue}} {{reason}}"),
    ]),
    ("Queues", "Arrival and drain (jobs/s)", "ops", [
        ("max by (queue) (medic_queue_arrival_rate)", "{{queue}} arrival"),
        ("max by (queue) (medic_queue_drain_rate)", "{{queue}} drain"),
        ("sum by (queue) (rate(medic_jobs_accepted_total[5m]))", "{{queue}} accepted (API)"),
    ]),
    ("Queues", "Worker slots: desired (KEDA/autoscale) and consumers", "short", [
        ("max by (queue) (medic_queue_desired_slots)", "{{queue}} desired"),
        ("max by (queue) (medic_queue_consumers)", "{{queue}} consumers"),
        ("max(medic_workers_live)", "live worker processes"),
    ]),
    ("Queues", "Oldest queued job", "s", [
        ("max by (queue) (medic_queue_oldest_queued_age_seconds)", "{{queue}}"),
        ("histogram_quantile(0.95, sum by (le, queue) (rate(medic_job_queue_wait_seconds_bucket[5m])))",
         "{{queue}} p95 wait"),
    ]),
    ("Jobs", "Job outcomes (per s)", "ops", [
        ("sum by (outcome) (rate(medic_jobs_finished_total[5m]))", "{{outcome}}"),
    ]),
    ("Jobs", "Job duration p50 / p95", "s", [
        ("histogram_quantile(0.5, sum by (le, type) (rate(medic_job_duration_seconds_bucket[5m])))", "{{type}} p50"),
        ("histogram_quantile(0.95, sum by (le, type) (rate(medic_job_duration_seconds_bucket[5m])))", "{{type}} p95"),
    ]),
    ("Jobs", "Jobs in the ledger by state", "short", [
        ("sum by (state) (max by (state, queue) (medic_jobs))", "{{state}}"),
    ]),
    ("Healing", "Recoveries (per 5 min)", "short", [
        ("sum by (loop, outcome) (increase(medic_recoveries_total[5m]))", "{{loop}} {{outcome}}"),
    ]),
    ("Healing", "Control loop age", "s", [
        ("time() - max by (loop) (medic_loop_last_run_timestamp_seconds)", "{{loop}}"),
        ("max(medic_beat_last_tick_age_seconds)", "beat tick"),
    ]),
    ("Healing", "Control loop duration p95", "s", [
        ("histogram_quantile(0.95, sum by (le, loop) (rate(medic_loop_duration_seconds_bucket[5m])))", "{{loop}}"),
    ]),
    ("Healing", "Alerts firing (medic's own verdict)", "short", [
        ("sum by (alert, severity) (medic_alerts_firing)", "{{alert}} ({{severity}})"),
    ]),
    ("Resources", "Ledger pool use", "percentunit", [
        ("max by (process) (medic_db_pool_checked_out / medic_db_pool_capacity)", "{{process}}"),
    ]),
    ("Resources", "PostgreSQL connections", "short", [
        ("max(medic_postgres_connections)", "in use"),
        ("max(medic_postgres_max_connections)", "max_connections"),
        ("min(medic_ledger_up)", "ledger up (API)"),
    ]),
    ("Resources", "Redis memory", "bytes", [
        ("max(medic_redis_used_memory_bytes)", "used"),
        ("max(medic_redis_maxmemory_bytes)", "maxmemory"),
    ]),
    ("API", "API latency p50 / p95 / p99", "s", [
        (f"histogram_quantile({q}, sum by (le) (rate(medic_api_request_seconds_bucket[5m])))", f"p{int(q * 100)}")
        for q in (0.5, 0.95, 0.99)
    ]),
    ("API", "API requests by status", "reqps", [
        ("sum by (status) (rate(medic_api_requests_total[5m]))", "{{status}}"),
    ]),
]  # fmt: skip


def _panel(pid: int, title: str, unit: str, targets: list[tuple[str, str]], x: int, y: int) -> dict[str, Any]:
    return {
        "id": pid,
        "type": "timeseries",
        "title": title,
        "datasource": DS,
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y, pid, row, col = 0, 1, None, 0
    for row_title, title, unit, targets in PANELS:
        if row_title != row:
            y += 8 if col else 0
            panels.append({"id": pid, "type": "row", "title": row_title, "collapsed": False,
                           "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})  # fmt: skip
            pid, y, col, row = pid + 1, y + 1, 0, row_title
        panels.append(_panel(pid, title, unit, targets, 12 * col, y))
        pid, col = pid + 1, 1 - col
        y += 8 if col == 0 else 0
    return {
        "uid": "medic",
        "title": "medic",
        "tags": ["medic", "celery"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [{"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"}]
        },
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    if "--check" in sys.argv:
        sys.exit(0 if OUT.read_text() == render() else 1)
    OUT.write_text(render())
    print(f"wrote {OUT}")
