"""bench/hot_writes.py at a tiny size: both modes run every claim and succeed and report per-job
figures. No timing is asserted: the figures belong to the committed run, on a quiet machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests import ROOT

pytestmark = [pytest.mark.timeout(120)]


def test_hot_writes_bench_runs_both_modes_and_reports_every_figure() -> None:
    # Bugs caught: a mode silently skipped (no runs), a figure missing from the JSON the docs
    # quote, CPU read from the wrong process (PostgreSQL CPU 0), the bench leaving a failure.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIC_")}
    run = subprocess.run(
        [sys.executable, "-m", "bench.hot_writes", "--jobs", "200", "--rounds", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=100,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    for mode in ("prepared", "not_prepared"):
        for figure in ("wall_ms", "client_cpu_ms", "postgres_cpu_ms"):
            assert len(report[mode][figure]["runs"]) == 1, (mode, figure)
        assert report[mode]["wall_ms"]["median"] > 0 and report[mode]["postgres_cpu_ms"]["median"] > 0
    assert set(report["gain_on_median"]) == {"wall_ms", "client_cpu_ms", "postgres_cpu_ms"}
    assert len(report["load_before_each_round"]) == 1
