"""The connection budget (a private PostgreSQL with few slots) and `medic health`."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from worker.testing.processes import Processes, wait_for
from worker.testing.servers import PrivatePostgres

MEDIC = [sys.executable, "-m", "worker.ops.cli"]


@pytest.fixture(scope="module")
def small_pg() -> Iterator[PrivatePostgres]:
    """A private cluster with max_connections 20 (17 left after the 3 superuser slots)."""
    pg = PrivatePostgres()
    with open(pg.data / "postgresql.conf", "a") as conf:
        conf.write("\nmax_connections = 20\n")
    pg.start()
    yield pg
    pg.destroy()


def _medic(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MEDIC, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def test_worker_and_up_refuse_past_the_budget_and_say_how_to_fix_it(
    medic_env: dict[str, str], small_pg: PrivatePostgres
) -> None:
    env = {**medic_env, "MEDIC_DATABASE_URL": small_pg.url, "MEDIC_DB_POOL_SIZE": "10"}
    refused = _medic(env, "worker", "-c", "4", "-Q", "q-budget-none")
    assert refused.returncode == 2, refused.stderr
    assert "connection budget exceeded" in refused.stderr
    assert "up to 100 ledger connections" in refused.stderr  # 5 processes x (10 + 10 overflow)
    assert "max_connections 20 - 3 reserved" in refused.stderr
    assert "MEDIC_DB_POOL_SIZE" in refused.stderr, "it says how to fix it"

    up = _medic(env, "up", "--workers", "1", "--concurrency", "2", "--no-flower", "--api-port", "1")
    assert up.returncode == 2 and "connection budget exceeded" in up.stderr, up.stderr


def test_a_worker_within_the_budget_starts(
    medic_env: dict[str, str], small_pg: PrivatePostgres, procs: Processes
) -> None:
    # 2 processes x (2 + 2) = 8 of the 17 left
    env = {"MEDIC_DATABASE_URL": small_pg.url, "MEDIC_DB_POOL_SIZE": "2", "MEDIC_METRICS_PORT": "0"}
    proc = procs.start("budget-ok", [*MEDIC, "worker", "-c", "1", "-Q", "q-fits"], **env)
    wait_for(lambda: "ready." in proc.log() or not proc.alive(), 30, 0.1, "worker ready")
    assert proc.alive() and "connection budget" not in proc.log(), proc.log()


def test_medic_health_tells_the_truth(medic_env: dict[str, str], procs: Processes, stack: str) -> None:
    run = uuid.uuid4().hex[:6]
    own = {"MEDIC_KEY_PREFIX": f"mh{run}:", "MEDIC_BROKER_KEY_PREFIX": f"mhb{run}:", "MEDIC_METRICS_PORT": "0"}
    env = {**medic_env, **own}

    def health(role: str, *extra: str) -> tuple[int, dict[str, object]]:
        done = _medic(env, "health", "--role", role, *extra)
        return done.returncode, json.loads(done.stdout)

    code, body = health("worker")
    assert code == 1 and body["ok"] is False, "no worker of this prefix runs yet"
    worker = procs.worker("health-w", queues="default", concurrency=1, **own)
    code, body = health("worker")
    assert code == 0 and body["consuming"], body
    worker.stop()
    assert wait_for(lambda: health("worker")[0] == 1, 20, 0.2, "unhealthy once stopped")

    assert health("beat")[0] == 1, "no beat ticks under this prefix"
    assert health("api", "--url", stack)[0] == 0
    assert health("api", "--url", "http://127.0.0.1:1")[0] == 1
