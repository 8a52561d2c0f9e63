"""docs/benchmarks.md quotes docs/bench/scale.json exactly: its Scale table, prune and RSS lines
are what bench/tables.py renders from the committed run."""

from __future__ import annotations

import json

from bench.tables import render_scale
from tests import ROOT


def test_the_scale_section_quotes_the_committed_run() -> None:
    """Fails if the bench is rerun (or the docs edited) and the two no longer agree."""
    report = json.loads((ROOT / "docs" / "bench" / "scale.json").read_text())
    docs = (ROOT / "docs" / "benchmarks.md").read_text()
    assert render_scale(report) in docs
    assert f"`code.head` {report['code']['head']}" in docs
