"""Each alert rule is declared once (worker/control/alert_rules.py): its threshold setting is the
one medic's own check reads, and the Prometheus expression carries that setting's default."""

from __future__ import annotations

import inspect

import pytest

from worker.control.alert_rules import RULES, Threshold, render
from worker.settings import Settings


def test_each_threshold_is_the_setting_its_check_reads() -> None:
    declared = [rule for rule in RULES if rule.threshold is not None]
    assert len(declared) >= 5
    for rule in declared:
        assert rule.threshold is not None
        assert f"s.{rule.threshold.setting}" in inspect.getsource(rule.check), rule.name
        assert "$threshold" in rule.expr, rule.name


def test_an_expression_without_a_threshold_names_no_placeholder() -> None:
    for rule in RULES:
        assert "$threshold" not in rule.promql() and "$percent" not in rule.promql(), rule.name
        assert "$percent" not in rule.prometheus_summary(), rule.name


def test_the_rendered_file_follows_a_changed_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """The expression takes the setting's default, scaled to PromQL's unit, not a copy of it."""
    slow = next(rule for rule in RULES if rule.name == "MedicApiSlow")
    assert slow.threshold == Threshold("slow_request_ms", scale=0.001)
    assert "> 1\n" in slow.promql()
    monkeypatch.setattr(Settings.model_fields["slow_request_ms"], "default", 2500.0)
    assert "> 2.5\n" in slow.promql()
    assert "MEDIC_SLOW_REQUEST_MS = 2500 (2.5 in the expression)" in render()


def _block(text: str, name: str) -> str:
    start = text.index(f"- alert: {name}\n")
    end = text.find("- alert: ", start + 1)
    return text[start : end if end > 0 else len(text)]


def test_the_rendered_for_is_each_rules_for_at_the_default_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "for:" not in _block(render(), "MedicQueueShedding")  # 0 s: fires on the first evaluation
    assert "for: 1m\n" in _block(render(), "MedicQueueBacklogOld")
    monkeypatch.setattr(Settings.model_fields["alert_for_seconds"], "default", 90.0)
    assert "for: 90s\n" in _block(render(), "MedicQueueBacklogOld")
    assert "for:" not in _block(render(), "MedicQueueShedding")
