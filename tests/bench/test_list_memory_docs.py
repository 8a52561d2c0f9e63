"""docs/api.md quotes the committed list-memory runs exactly (docs/bench/list_memory*.json): a
rerun that changes a figure, or a doc edited by hand, fails here."""

from __future__ import annotations

import json

from tests import ROOT


def _growth(name: str, query: str) -> float:
    report = json.loads((ROOT / "docs" / "bench" / name).read_text())
    [run] = [r for r in report["runs"] if r["query"] == query]
    return float(run["peak_growth_mb"])


def test_the_listing_figures_are_the_committed_ones() -> None:
    text = " ".join((ROOT / "docs" / "api.md").read_text().split())
    before = _growth("list_memory_before.json", "limit=500")
    after = _growth("list_memory.json", "limit=500")
    asked = _growth("list_memory.json", "limit=50&fields=args,result")
    assert f"growing by {before} MB for one `GET /jobs?limit=500` before this change" in text
    assert f"{after} MB for the same page without them" in text
    assert f"and {asked} MB for `limit=50&fields=args,result`" in text
    assert after < before / 10, "the point of the change"
