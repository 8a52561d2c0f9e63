"""docs/benchmarks.md quotes the committed throughput runs exactly: its throughput table is what
bench/tables.py renders from docs/bench/throughput_before.json, throughput_stop15.json
and throughput.json."""

from __future__ import annotations

import json

from bench.tables import TITLES, render_throughput
from tests import ROOT

RUNS = ("throughput_before.json", "throughput_stop15.json", "throughput.json")


def test_the_throughput_table_quotes_the_committed_runs() -> None:
    """Fails if a run is redone (or the docs edited) and the two no longer agree."""
    reports = [json.loads((ROOT / "docs" / "bench" / name).read_text()) for name in RUNS]
    docs = (ROOT / "docs" / "benchmarks.md").read_text()
    assert render_throughput(list(zip(TITLES, reports, strict=True))) in docs
    assert f"`code.head` {reports[-1]['code']['head']}" in docs
