"""docs/configuration.md is generated from worker.settings: it must match the code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests import ROOT
from worker.ops import config_doc
from worker.settings import FAST_PROFILE, Settings


def test_configuration_doc_is_up_to_date() -> None:
    doc = ROOT / "docs" / "configuration.md"
    assert doc.read_text(encoding="utf-8") == config_doc.render(), (
        "docs/configuration.md is out of date: run `make docs` (python -m worker.ops.config_doc)"
    )


def test_the_doc_names_every_settings_variable_and_fast_override() -> None:
    text = config_doc.render()
    for name in Settings.model_fields:
        assert f"`MEDIC_{name.upper()}`" in text, name
    fast = text.split("## The `fast` profile", 1)[1]
    for name in FAST_PROFILE:
        assert f"`MEDIC_{name.upper()}`" in fast, name


def test_check_mode_exits_0_when_current() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "worker.ops.config_doc", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def test_check_mode_exits_1_naming_the_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text("# Configuration\n", encoding="utf-8")
    monkeypatch.setattr(config_doc, "DOC", stale)
    assert config_doc.main(["--check"]) == 1
    assert config_doc.main([]) == 0
    assert config_doc.main(["--check"]) == 0
