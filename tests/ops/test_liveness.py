"""Liveness asks the process only: with Redis stopped a worker's liveness probe (the command the
manifests run) still passes, and it fails when the process itself stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests import ROOT
from worker.ops.stack import PrivateRedis
from worker.testing.processes import Processes, wait_for

BIN = Path(sys.executable).parent


def _probe(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    assert argv[0] == "medic", argv
    return subprocess.run([str(BIN / "medic"), *argv[1:]], env=env, capture_output=True, text=True, timeout=60)


def _k8s_liveness(manifest: str) -> list[str]:
    (dep,) = [d for d in yaml.safe_load_all((ROOT / "deploy/k8s" / manifest).read_text()) if d["kind"] == "Deployment"]
    command: list[str] = dep["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["exec"]["command"]
    return command


def _compose_healthcheck(service: str) -> list[str]:
    services = yaml.safe_load((ROOT / "deploy/compose.yaml").read_text())["services"]
    test: list[Any] = services[service]["healthcheck"]["test"]
    assert test[0] == "CMD"
    return [str(t) for t in test[1:]]


def test_a_worker_stays_live_while_redis_is_down_and_not_when_it_stops(
    procs: Processes, private_redis: PrivateRedis, medic_env: dict[str, str], tmp_path: Path
) -> None:
    """Given a worker on a Redis of its own, When that Redis stops, Then the liveness probes of
    deploy/k8s and deploy/compose still pass (a restart would not bring Redis back); When the
    worker's main process is frozen, Then they fail."""
    alive = tmp_path / "alive"
    env = {"MEDIC_REDIS_URL": private_redis.url, "MEDIC_LIVENESS_FILE": str(alive)}
    worker = procs.worker("live-w", queues="default", concurrency=1, **env)
    probe_env = {**medic_env, **env}
    wait_for(alive.exists, 20, 0.1, "liveness file")
    private_redis.stop(keep_dir=True)
    for argv in (_k8s_liveness("worker-default.yaml"), _compose_healthcheck("worker")):
        run = _probe(argv, probe_env)
        assert run.returncode == 0, (argv, run.stdout, run.stderr)
    # and the readiness probe does see the outage: it is the one that asks Redis
    assert _probe(["medic", "health", "--role", "worker"], probe_env).returncode == 1

    os.kill(worker.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: _probe(_k8s_liveness("worker-default.yaml"), probe_env).returncode == 1, 30, 0.5, "stale")
    finally:
        os.kill(worker.pid, signal.SIGCONT)


def test_every_liveness_probe_of_a_celery_process_is_local() -> None:
    for manifest, role in (("worker-default.yaml", "worker"), ("control.yaml", "control"), ("beat.yaml", "beat")):
        assert _k8s_liveness(manifest) == ["medic", "health", "--role", role, "--live"]


def test_beat_touches_its_liveness_file(procs: Processes, medic_env: dict[str, str], tmp_path: Path) -> None:
    alive = tmp_path / "beat-alive"
    procs.beat("live-beat", MEDIC_LIVENESS_FILE=str(alive))
    wait_for(alive.exists, 30, 0.1, "beat's liveness file")
    run = _probe(_k8s_liveness("beat.yaml"), {**medic_env, "MEDIC_LIVENESS_FILE": str(alive)})
    assert run.returncode == 0, run.stdout + run.stderr
