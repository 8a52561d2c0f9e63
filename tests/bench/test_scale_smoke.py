"""bench/scale.py at tiny sizes: every op runs and gives the right answer, the JSON carries every
key docs/benchmarks.md quotes, and the bench leaves no database or Redis key behind. No timing is
asserted: the figures belong to the full run (`make bench`), on a quiet machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
import sqlalchemy as sa

from bench.scale import LIST_LIMIT
from bench.scale_fill import PROBLEMS_EACH
from tests import ROOT
from worker.testing.servers import PG_ADMIN_URL

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

SIZES = (2000, 10000)
RSS_JOBS = 200
LOOPS = (
    "recover_stuck",
    "enforce_timeouts",
    "reconcile_broker",
    "apply_backpressure",
    "autoscale",
    "health_and_alerts",
)
READS = ("get_job", "list_queued", "queues", "health_ready")


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    """One run of the bench in its own process, with its own database and key prefixes (MEDIC_*
    of this test session left out, as a shell would run it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIC_")}
    argv = [sys.executable, "-m", "bench.scale", "--sizes", ",".join(map(str, SIZES)), "--rss-jobs", str(RSS_JOBS)]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=130)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout))


def test_every_loop_acted_on_exactly_the_planted_jobs(report: dict[str, Any]) -> None:
    """Fails if a loop stops finding what it should at some size (a query that misses the stuck,
    overdue, unpublished or lost jobs) or acts on more (the fill's live jobs taken for stuck)."""
    for size in report["sizes"]:
        loops = size["loops"]
        assert set(loops) == set(LOOPS)
        assert loops["recover_stuck"]["answer"]["requeued"] == PROBLEMS_EACH
        assert loops["recover_stuck"]["answer"]["lease_late"] == 0
        assert loops["enforce_timeouts"]["answer"]["requeued"] == PROBLEMS_EACH
        assert loops["reconcile_broker"]["answer"]["unpublished"] == PROBLEMS_EACH
        assert loops["reconcile_broker"]["answer"]["lost"] == PROBLEMS_EACH
        assert loops["apply_backpressure"]["answer"]["queues"] == len(report["queues"])
        assert loops["autoscale"]["answer"]["queues"] == len(report["queues"])
        assert "skipped" not in loops["health_and_alerts"]["answer"]
        assert all(op["answered_right"] for op in loops.values()), loops


def test_every_read_answered_right(report: dict[str, Any]) -> None:
    """Fails if GET /jobs?state=queued returns fewer than a page or other states, GET /jobs/{id}
    another job, GET /queues other queues, or /health/ready is not ready."""
    last = report["sizes"][-1]["api"]
    assert set(last) == set(READS)
    assert last["list_queued"]["answer"]["rows"] == LIST_LIMIT
    assert last["list_queued"]["answer"]["states"] == ["queued"]
    assert last["queues"]["answer"]["queues"] == sorted(report["queues"])
    assert all(op["answer"]["answered_right"] for size in report["sizes"] for op in size["api"].values())


def test_the_ledger_grew_to_each_size(report: dict[str, Any]) -> None:
    """Fails if the fill stops being cumulative or loses its mix (queued, running, events)."""
    for size, measured in zip(SIZES, report["sizes"], strict=True):
        ledger = measured["ledger"]
        assert measured["size"] == size
        assert size <= ledger["jobs"] <= size + 4 * PROBLEMS_EACH
        assert ledger["jobs_queued"] >= size // 100 and ledger["jobs_running"] >= size // 200
        assert ledger["events"] > 2 * size


def test_prune_deleted_exactly_the_expired(report: dict[str, Any]) -> None:
    """Fails if prune misses expired jobs, deletes live or fresh ones, or leaves their events."""
    prune = report["prune"]
    assert prune["expired_before"]["jobs"] > SIZES[-1] // 5
    assert prune["deleted"] == prune["expired_before"]["jobs"]
    assert prune["events_deleted"] == prune["expired_before"]["events"]
    assert prune["deleted_exactly_the_expired"] is True
    assert prune["e2e_jobs_per_s"] and prune["ratio_to_e2e"] is not None


def test_rss_was_read_after_real_jobs(report: dict[str, Any]) -> None:
    """Fails if the jobs did not all run through the API and worker, or RSS was not read."""
    rss = report["rss"]
    assert rss["all_finished"] is True and rss["after_all"]["jobs_finished"] >= RSS_JOBS
    assert rss["after_first_tenth"]["jobs_finished"] >= RSS_JOBS // 10
    for point in (rss["after_first_tenth"], rss["after_all"]):
        assert point["api_rss_mb"] > 10 and len(point["worker_children_rss_mb"]) == 2
        assert all(mb > 10 for mb in point["worker_children_rss_mb"].values())


def test_the_json_has_every_key_the_docs_quote(report: dict[str, Any]) -> None:
    """Fails if a key docs/benchmarks.md reads from docs/bench/scale.json is renamed or dropped."""
    for key in ("command", "code", "elapsed_s", "machine", "flatness", "all_ops_meet_target", "prune", "rss"):
        assert key in report, key
    assert report["code"]["head"] and "load_avg_at_start" in report["machine"]
    assert set(report["flatness"]) == set(LOOPS) | set(READS)
    for op in report["flatness"].values():
        assert set(op["p50_ms_by_size"]) == {str(s) for s in SIZES}
        assert {"ratio_largest_to_smallest", "meets_target", "answered_right_at_every_size"} <= set(op)
    for size in report["sizes"]:
        assert {"loadavg_1m", "busy_cores"} <= set(size["load_before"]) and "runs_ms" in size["loops"]["autoscale"]
    for key in ("jobs_per_s", "seconds", "e2e_jobs_per_s", "ratio_to_e2e", "meets_target"):
        assert key in report["prune"], key
    for key in ("api_growth", "worker_child_growth", "meets_target", "after_first_tenth", "after_all"):
        assert key in report["rss"], key


def test_nothing_is_left_behind(report: dict[str, Any]) -> None:
    """Fails if the bench leaves its database or any of its Redis keys."""
    import redis

    engine = sa.create_engine(PG_ADMIN_URL)
    try:
        with engine.connect() as conn:
            left = conn.scalar(
                sa.text("SELECT count(*) FROM pg_database WHERE datname = :n"), {"n": report["database"]}
            )
    finally:
        engine.dispose()
    assert left == 0
    r = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    for prefix in report["key_prefixes"]:
        assert next(iter(r.scan_iter(match=f"{prefix}*", count=1000)), None) is None, prefix
