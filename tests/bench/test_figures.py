"""Every measured figure in docs/*.md and README.md comes from a committed run under docs/bench/,
that run records its commit, its start and the machine's load, and the docs print what it says.

The figures and where each comes from are listed in tests/bench/quoted.py: tables rendered whole by
bench/tables.py, single figures (`Quote`), and the few numbers that only look measured (`Allowed`).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests import ROOT
from tests.bench.figures import Quote, doc_text, flat, matches, measurements, report, resolve, spans
from tests.bench.quoted import ALLOWED, QUOTES, RENDERED

DOCS = sorted([p.name for p in (ROOT / "docs").glob("*.md")] + ["README.md"])
LOAD_KEYS = ("load_avg_at_start", "loadavg_1m", "load_average_1m_at_end")
SOURCES = sorted({q.source for q in QUOTES} | {s for _, _, sources in RENDERED for s in sources})


@pytest.mark.parametrize("quote", QUOTES, ids=lambda q: f"{q.doc}:{q.text[-40:]}")
def test_each_quoted_figure_is_what_its_run_measured(quote: Quote) -> None:
    """Fails if a doc's figure differs from its JSON (a rerun, an edit, a typo) or is gone."""
    assert spans(doc_text(quote.doc), quote.text), f"{quote.doc} no longer says {quote.text!r}"
    ok, why = matches(quote)
    assert ok, f"{quote.doc}: {why} ({quote.source} {quote.path})"


@pytest.mark.parametrize(("doc", "render", "sources"), RENDERED, ids=lambda v: v if isinstance(v, str) else "")
def test_each_rendered_table_is_in_its_doc(doc: str, render: Any, sources: tuple[str, ...]) -> None:
    """Fails if a run is redone (or the doc edited) and the table no longer renders as printed."""
    assert flat(render([report(s) for s in sources])) in doc_text(doc)


@pytest.mark.parametrize("source", SOURCES)
def test_each_quoted_run_records_its_commit_start_and_load(source: str) -> None:
    """Fails if a doc quotes a run that cannot say which code it measured, when, or how busy the
    machine was (bench/common.py `header` writes all three)."""
    run = report(source)
    assert run["code"]["head"], f"{source}: no commit"
    assert run.get("timestamp"), f"{source}: no start time"
    assert _has_load(run), f"{source}: no load reading"


def _has_load(value: Any) -> bool:
    if isinstance(value, dict):
        return any((k in LOAD_KEYS and v) or _has_load(v) for k, v in value.items())
    return isinstance(value, list) and any(_has_load(v) for v in value)


@pytest.mark.parametrize("doc", DOCS)
def test_no_measured_figure_is_left_without_its_run(doc: str) -> None:
    """Fails if a doc prints a measured-looking figure (a decimal, thousands, a rate, a size) that
    no quote, rendered table or allowance covers: a figure from memory, or from a run not kept."""
    text = doc_text(doc)
    covered: set[int] = set()
    stretches = [q.text for q in QUOTES if q.doc == doc] + [a.text for a in ALLOWED if a.doc == doc]
    stretches += [render([report(s) for s in sources]) for d, render, sources in RENDERED if d == doc]
    for stretch in stretches:
        for span in spans(text, stretch):
            covered.update(span)
    loose = [text[max(0, m.start() - 40) : m.end() + 10] for m in measurements(text) if m.start() not in covered]
    assert not loose, "\n".join(loose)


def test_every_allowance_still_applies() -> None:
    """Fails if an allowance names text a doc no longer holds (it would excuse nothing, silently)."""
    stale = [a for a in ALLOWED if not spans(doc_text(a.doc), a.text)]
    assert not stale, stale


def test_the_path_language_fails_loudly() -> None:
    """A path that finds nothing is an error, not a match."""
    with pytest.raises((KeyError, IndexError)):
        resolve("scale.json", "prune.no_such_key")
