"""A real Prometheus (Debian's `prometheus`) scraping a real medic stack on loopback: an API, one
worker, the control worker and beat, each serving /metrics.

1. Every metric the alert rules, the Grafana dashboard and the KEDA trigger query is served by
   medic's processes: each name is in a real scrape of their /metrics, after a job has run and a
   healing loop has given one back (a counter made lazily is served only once it has a value).
2. deploy/prometheus/rules.yml, loaded as it is (only the `for` durations shortened), drives
   MedicQueueUnconsumed to `firing` when the only worker stops with jobs queued, as Prometheus's
   /api/v1/alerts reports it.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.control.fabricate import queued_job
from worker.testing.processes import Proc, Processes, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus missing: apt-get install prometheus (.ci/run does)"),
    pytest.mark.timeout(180),
    pytest.mark.slow,
]
QUEUE = "default"


@dataclass
class Stack:
    procs: Processes
    api_url: str
    worker: Proc
    worker_port: int
    control_port: int
    http: httpx.Client
    tmp: Path

    def targets(self) -> dict[str, str]:
        return {
            "medic-api": self.api_url.removeprefix("http://"),
            "medic-worker": f"127.0.0.1:{self.worker_port}",
            "medic-control": f"127.0.0.1:{self.control_port}",
        }


@pytest.fixture(scope="module")
def stack(private_ledger: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from worker.ledger import apikeys, db

    tmp = tmp_path_factory.mktemp("live-prometheus")
    procs = Processes(private_ledger, tmp)
    try:
        _, url = procs.api()
        worker_port, control_port = free_port(), free_port()
        worker = procs.worker("w-prom", QUEUE, 1, MEDIC_METRICS_PORT=str(worker_port))
        procs.control(MEDIC_METRICS_PORT=str(control_port))
        procs.beat()
        with db.begin() as conn:
            key = apikeys.create_key(conn, "deploy-prom", apikeys.parse_scopes("submit,read,admin"))
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=15) as http:
            yield Stack(procs, url, worker, worker_port, control_port, http, tmp)
    finally:
        procs.stop_all()


def _submit(http: httpx.Client, job_type: str, args: dict[str, Any]) -> str:
    r = http.post("/jobs", json={"type": job_type, "args": args, "queue": QUEUE})
    assert r.status_code == 202, r.text
    job_id: str = r.json()["id"]
    return job_id


def _metric_names(text: str) -> set[str]:
    """Families (# TYPE lines, which list a family even before it has samples) and sample names."""
    names = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    names |= {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    return names


def served_names(s: Stack) -> set[str]:
    names: set[str] = set()
    for target in s.targets().values():
        r = httpx.get(f"http://{target}/metrics", timeout=5)
        assert r.status_code == 200, (target, r.text)
        names |= _metric_names(r.text)
    return names


def queried_names(extra: dict[str, str] | None = None) -> dict[str, set[str]]:
    """Where each medic_* metric is queried: rules.yml, the dashboard, the KEDA trigger."""
    sources = {
        "deploy/prometheus/rules.yml": (ROOT / "deploy/prometheus/rules.yml").read_text(),
        "deploy/grafana/medic.json": " ".join(
            t["expr"] for p in json.loads((ROOT / "deploy/grafana/medic.json").read_text())["panels"]
            for t in p.get("targets", [])
        ),
        "deploy/k8s/keda.yaml": " ".join(
            t["metadata"]["query"] for d in yaml.safe_load_all((ROOT / "deploy/k8s/keda.yaml").read_text())
            for t in d["spec"]["triggers"]
        ),
    }  # fmt: skip
    sources.update(extra or {})
    out: dict[str, set[str]] = {}
    for where, text in sources.items():
        for name in re.findall(r"\bmedic_[a-z0-9_]+", text):
            out.setdefault(name, set()).add(where)
    return out


def missing_names(stack: Stack, extra: dict[str, str] | None = None) -> dict[str, list[str]]:
    served = served_names(stack)
    return {name: sorted(where) for name, where in queried_names(extra).items() if name not in served}


def test_every_queried_metric_is_served_by_medic(stack: Stack) -> None:
    job_id = _submit(stack.http, "examples.echo", {"message": "hi"})
    # a queued job the broker never got (its publish refused): reconcile_broker gives it back,
    # which is what makes the control worker serve medic_recoveries_total at all
    unpublished = queued_job("deploy-prom", queue=QUEUE)
    for job in (job_id, str(unpublished.id)):
        wait_for(lambda j=job: stack.http.get(f"/jobs/{j}").json()["state"] == "succeeded", 30, 0.1, "job succeeded")
    # the snapshot gauges come from the health loop's first run, the job metrics from the worker
    lazy = {"medic_queue_depth", "medic_jobs_finished_total", "medic_recoveries_total"}
    wait_for(lambda: lazy <= served_names(stack), 30, 0.2, f"each of {sorted(lazy)} in a scrape")
    missing = missing_names(stack)
    assert not missing, f"queried but not served by medic's processes: {missing}"


def test_a_panel_querying_a_metric_that_does_not_exist_is_caught(stack: Stack) -> None:
    panel = {"a panel": "max by (queue) (medic_queue_depht)"}  # one letter off
    assert missing_names(stack, panel) == {"medic_queue_depht": ["a panel"]}


def _prometheus_config(s: Stack) -> Path:
    rules = (ROOT / "deploy/prometheus/rules.yml").read_text()
    # Thresholds and expressions as shipped; only the waiting is shortened for a test.
    rules = re.sub(r"for: \d+m", "for: 2s", rules)
    (s.tmp / "rules.yml").write_text(rules)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(s.tmp / "rules.yml")],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [t]}]} for job, t in s.targets().items()],
    }
    path = s.tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def _alerts(prom: str) -> list[dict[str, Any]]:
    alerts: list[dict[str, Any]] = httpx.get(f"{prom}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    return alerts


def test_queue_unconsumed_fires_in_prometheus_when_the_only_worker_stops(stack: Stack) -> None:
    # Given a real Prometheus scraping the stack with medic's rules
    assert PROMETHEUS
    port = free_port()
    prom = f"http://127.0.0.1:{port}"
    stack.procs.start("prometheus", [
        PROMETHEUS, f"--config.file={_prometheus_config(stack)}", f"--storage.tsdb.path={stack.tmp / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ])  # fmt: skip

    def targets_up() -> bool:
        try:
            active = httpx.get(f"{prom}/api/v1/targets", timeout=2).json()["data"]["activeTargets"]
        except (httpx.HTTPError, ValueError, KeyError):
            return False
        return len(active) == 3 and all(t["health"] == "up" for t in active)

    wait_for(targets_up, 30, 0.2, "prometheus scraping api, worker and control")
    assert not [a for a in _alerts(prom) if a["labels"]["alertname"] == "MedicQueueUnconsumed"]

    # When the only worker of the queue stops and jobs are queued
    stack.worker.stop()
    for i in range(3):
        _submit(stack.http, "examples.echo", {"message": f"waiting {i}"})

    # Then Prometheus reports MedicQueueUnconsumed firing for that queue
    def firing() -> dict[str, Any] | None:
        for a in _alerts(prom):
            if a["labels"]["alertname"] == "MedicQueueUnconsumed" and a["state"] == "firing":
                return a
        return None

    alert = wait_for(firing, 60, 0.5, "MedicQueueUnconsumed firing in Prometheus")
    assert alert["labels"] == {"alertname": "MedicQueueUnconsumed", "queue": QUEUE, "severity": "critical"}
    assert float(alert["value"]) >= 3
    print("prometheus /api/v1/alerts:", json.dumps(alert))
