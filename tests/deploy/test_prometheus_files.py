"""deploy/prometheus and deploy/grafana, offline: promtool checks the config, the rules and their
unit tests (deploy/prometheus/rules_test.yml), the rules file is the one rendered from medic's own
health_and_alerts rules (worker/control/alert_rules.py: expressions, thresholds, `for`), and every
dashboard query is valid PromQL. Whether the metrics they
name exist is checked against live processes in test_live_prometheus.py."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
# The contract with docs/operations.md: these names, no others.
ALERTS = {
    "MedicQueueShedding", "MedicQueueBacklogOld", "MedicJobsLeaseLate", "MedicDeadJobsHigh", "MedicQueueUnconsumed",
    "MedicLoopStale", "MedicDbPoolSaturated", "MedicPostgresConnectionsHigh", "MedicRedisMemoryHigh",
    "MedicRedisEvictionPolicy", "MedicApiSlow", "MedicConsumerStalled", "MedicScheduleMissed",
}  # fmt: skip
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: apt-get install prometheus (.ci/run)")


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load((PROM / "rules.yml").read_text())
    return [r for g in data["groups"] for r in g["rules"]]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)


def _seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text))


@needs_promtool
def test_promtool_accepts_the_rules_and_their_unit_tests_pass() -> None:
    run = _promtool("check", "rules", str(PROM / "rules.yml"))
    assert run.returncode == 0, run.stdout + run.stderr
    run = _promtool("test", "rules", str(PROM / "rules_test.yml"))
    assert run.returncode == 0, run.stdout + run.stderr


@needs_promtool
def test_promtool_rule_tests_can_fail(tmp_path: Path) -> None:
    """The unit tests catch a wrong threshold: with the Redis memory limit at 95 % the 90 % case no longer fires."""
    (tmp_path / "rules.yml").write_text((PROM / "rules.yml").read_text().replace("> 0.8", "> 0.95"))
    shutil.copy(PROM / "rules_test.yml", tmp_path / "rules_test.yml")
    run = _promtool("test", "rules", str(tmp_path / "rules_test.yml"))
    assert run.returncode != 0
    assert "MedicRedisMemoryHigh" in run.stdout + run.stderr


@needs_promtool
def test_promtool_accepts_the_scrape_config(tmp_path: Path) -> None:
    # The config names the paths inside the container: point them at the files here.
    config = (PROM / "prometheus.yml").read_text()
    token = tmp_path / "metrics_token"
    token.write_text("t")
    config = config.replace("/etc/prometheus/rules.yml", str(PROM / "rules.yml"))
    config = config.replace("/etc/prometheus/metrics_token", str(token))
    (tmp_path / "prometheus.yml").write_text(config)
    run = _promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert run.returncode == 0, run.stdout + run.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text(config.replace("scrape_interval: 15s", "scrape_interval: fast"))
    assert _promtool("check", "config", str(broken)).returncode != 0


def test_alert_names_are_the_contracts() -> None:
    names = [r["alert"] for r in rules()]
    assert len(names) == len(set(names))
    assert set(names) == ALERTS


def test_every_rule_has_a_severity_and_a_summary() -> None:
    for r in rules():
        assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
        assert r["annotations"]["summary"], r["alert"]


def drift(file_rules: list[dict[str, Any]]) -> list[str]:
    """Where a rules file differs from worker/control/alert_rules.py with default settings: rule by
    rule, its severity, expression (threshold included), `for` and summary."""
    from worker.control import alert_rules
    from worker.settings import Settings

    s = Settings(profile="production")
    ours = {r["alert"]: r for r in file_rules}
    out = []
    for rule in alert_rules.RULES:
        mine = ours.get(rule.name)
        if mine is None:
            out.append(f"{rule.name} is evaluated by medic but not by Prometheus")
            continue
        if mine["labels"]["severity"] != rule.severity:
            out.append(f"{rule.name}: severity {mine['labels']['severity']} != {rule.severity}")
        if mine["expr"] != rule.promql():
            out.append(f"{rule.name}: expr {mine['expr']!r} != {rule.promql()!r}")
        if _seconds(mine.get("for", "0s")) != rule.for_seconds(s):
            out.append(f"{rule.name}: for {mine.get('for')} != {rule.for_seconds(s):g} s")
        if mine["annotations"]["summary"] != rule.prometheus_summary():
            out.append(f"{rule.name}: summary {mine['annotations']['summary']!r} != {rule.prometheus_summary()!r}")
    return out


def test_rules_mirror_medics_own_alert_rules() -> None:
    """Same name, severity, expression with its threshold, and `for` as worker/control/alert_rules.py
    with default settings."""
    assert drift(rules()) == []


def test_rules_file_is_what_the_python_rules_render() -> None:
    run = subprocess.run([sys.executable, "-m", "worker.control.alert_rules", "--check"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize(
    ("rule", "old", "new"),
    [
        ("MedicQueueBacklogOld", "for: 1m", "for: 2m"),  # the first rule with a `for`
        ("MedicQueueBacklogOld", "queued_age_seconds) > 300", "queued_age_seconds) > 600"),
        ("MedicDbPoolSaturated", "medic_db_pool_capacity) > 0.8", "medic_db_pool_capacity) > 0.9"),
        ("MedicQueueUnconsumed", "max by (queue) (medic_queue_depth) > 0", "max by (queue) (medic_queue_depth) > 1"),
        ("MedicQueueShedding", "(medic_queue_shedding) == 1\n", "(medic_queue_shedding) == 1\n        for: 1m\n"),
    ],
)  # fmt: skip
def test_a_rules_file_that_drifts_is_caught(tmp_path: Path, rule: str, old: str, new: str) -> None:
    """An edit of a `for`, a threshold or an expression: the field comparison names the rule, and
    `--check` (make lint) refuses the file."""
    from worker.control import alert_rules

    text = (PROM / "rules.yml").read_text()
    assert old in text
    path = tmp_path / "rules.yml"
    path.write_text(text.replace(old, new, 1))
    data = yaml.safe_load(path.read_text())
    found = drift([r for g in data["groups"] for r in g["rules"]])
    assert len(found) == 1 and found[0].startswith(rule), found
    assert alert_rules.main(["--check"], path=path) == 1
    assert alert_rules.main(["--check"], path=PROM / "rules.yml") == 0


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """Each panel query as a recording rule, so promtool parses it."""
    exprs = dashboard_exprs()
    assert len(exprs) > 20
    group = {"groups": [{"name": "dash", "rules": [{"record": f"dash:q{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dash.yml"
    path.write_text(yaml.safe_dump(group))
    run = _promtool("check", "rules", str(path))
    assert run.returncode == 0, run.stdout + run.stderr
    group["groups"][0]["rules"].append({"record": "dash:broken", "expr": "sum(rate(medic_jobs[5m])"})
    path.write_text(yaml.safe_dump(group))
    assert _promtool("check", "rules", str(path)).returncode != 0


def dashboard_exprs() -> list[str]:
    import json

    dash = json.loads((GRAFANA / "medic.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_dashboard_file_is_what_the_generator_writes() -> None:
    run = subprocess.run([sys.executable, str(GRAFANA / "build.py"), "--check"], capture_output=True, text=True)
    assert run.returncode == 0, "deploy/grafana/medic.json is stale: run deploy/grafana/build.py"


def test_dashboard_covers_what_matters() -> None:
    text = " ".join(dashboard_exprs())
    for metric in ("medic_queue_depth", "medic_queue_high_watermark", "medic_queue_shedding",
                   "medic_queue_arrival_rate",
                   "medic_queue_drain_rate", "medic_jobs_finished_total", "medic_job_duration_seconds_bucket",
                   "medic_recoveries_total", "medic_loop_last_run_timestamp_seconds", "medic_db_pool_checked_out",
                   "medic_api_request_seconds_bucket"):  # fmt: skip
        assert metric in text, metric
