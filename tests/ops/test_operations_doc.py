"""docs/operations.md lists every metric medic exports, and nothing else: a metric added to the
code without a row (or a row whose metric was renamed or removed) fails here."""

from __future__ import annotations

import re

from tests import ROOT

# Every module that makes a medic metric (prometheus-client objects or snapshot gauge families).
SOURCES = (
    "api/metrics.py",
    "api/stream_hub.py",
    "api/stream_replay.py",
    "api/routes/stream.py",
    "worker/runtime/job_metrics.py",
    "worker/runtime/pool_metrics.py",
    "worker/runtime/progress.py",
    "worker/control/metrics.py",
)
NOT_METRICS: set[str] = set()  # a string literal that starts with medic_ but names no metric goes here


def _in_code() -> set[str]:
    names: set[str] = set()
    for source in SOURCES:
        names |= set(re.findall(r'"(medic_[a-z_]+)"', (ROOT / source).read_text()))
    return names - NOT_METRICS


def _in_doc() -> set[str]:
    text = (ROOT / "docs/operations.md").read_text()
    table = text[text.index("## Every metric") : text.index("## Alerts")]
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `medic_")]
    return {name for cell in rows for name in re.findall(r"`(medic_[a-z_]+)`", cell)}


def test_every_metric_in_the_code_has_a_row_and_every_row_a_metric() -> None:
    code, doc = _in_code(), _in_doc()
    assert len(code) > 30, code  # the scan found the metrics at all
    assert sorted(code - doc) == [], "metrics without a row in docs/operations.md"
    assert sorted(doc - code) == [], "rows in docs/operations.md naming no metric"


def test_every_alert_rule_has_a_row_with_its_severity() -> None:
    from worker.control.alert_rules import RULES

    text = (ROOT / "docs/operations.md").read_text()
    rows = re.findall(r"^\| `(Medic[A-Za-z]+)` \| (\w+) \|", text, flags=re.M)
    assert sorted(rows) == sorted((rule.name, rule.severity) for rule in RULES)
