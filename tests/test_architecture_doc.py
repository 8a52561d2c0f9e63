"""docs/architecture.md is the map of the code: it names every module under worker/ and api/,
and every module it names exists."""

from __future__ import annotations

import re

from tests import ROOT

DOC = ROOT / "docs" / "architecture.md"
PACKAGES = ("worker", "api")
NAMED = re.compile(r"`((?:worker|api)/[\w/]+\.py)`")


def modules() -> set[str]:
    """Every module of the product, by its path; package markers and migration scripts aside."""
    found: set[str] = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if path.name == "__init__.py" or "/migrations/" in rel:
                continue
            found.add(rel)
    return found


def test_the_map_names_every_module() -> None:
    # Bug caught: a module added (or renamed) without its line in the map.
    named = set(NAMED.findall(DOC.read_text()))
    missing = sorted(modules() - named)
    assert not missing, f"docs/architecture.md does not name: {missing}"


def test_every_module_the_map_names_exists() -> None:
    # Bug caught: a module removed or moved while the map still sends readers to it.
    named = set(NAMED.findall(DOC.read_text()))
    stale = sorted(p for p in named if not (ROOT / p).is_file())
    assert not stale, f"docs/architecture.md names modules that do not exist: {stale}"


def test_the_map_finds_modules_at_all() -> None:
    # Bug caught: a pattern or a root that finds nothing, which would make both tests above pass.
    assert len(modules()) > 50
    assert {"worker/accept/flow.py", "api/routes/jobs.py"} <= modules()
    assert "worker/accept/flow.py" in NAMED.findall("see `worker/accept/flow.py` and `docs/api.md`")
