"""No deploy file loads medic's demo jobs (`worker.examples`: `examples.crash` kills a worker
child, `examples.sleep` holds a slot as long as asked); the operator names their own modules,
and the settings a deployment ships are accepted by the production profile."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DEMO = re.compile(rb"worker[./]examples")


def test_no_deploy_file_names_the_demo_jobs() -> None:
    files = [path for path in DEPLOY.rglob("*") if path.is_file() and "__pycache__" not in path.parts]
    for shipped in ("k8s/configmap.yaml", "compose.yaml", ".env.example", "Dockerfile"):
        assert DEPLOY / shipped in files, shipped  # the scan sees dotfiles and every directory
    naming = [str(path.relative_to(ROOT)) for path in files if DEMO.search(path.read_bytes())]
    assert naming == [], "deploy files that load the demo jobs"


def _configmap() -> dict[str, str]:
    data: dict[str, str] = yaml.safe_load((DEPLOY / "k8s" / "configmap.yaml").read_text())["data"]
    return data


@pytest.mark.parametrize("modules", [None, "worker.examples"])
def test_the_configmap_is_accepted_by_production_settings(monkeypatch: pytest.MonkeyPatch, modules: str | None) -> None:
    """As a pod reads it: from the environment, with nothing allowing the demo jobs."""
    env = _configmap()
    assert env["MEDIC_PROFILE"] == "production"
    if modules is not None:
        env["MEDIC_JOB_MODULES"] = modules
    monkeypatch.delenv("MEDIC_ALLOW_EXAMPLE_JOBS", raising=False)
    # the Secret's metrics token, which the ConfigMap's MEDIC_METRICS_HOST=0.0.0.0 requires
    env["MEDIC_METRICS_TOKEN"] = "a-real-metrics-token-of-32-chars"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if modules is None:
        assert Settings().job_modules == ["myapp.jobs"]
    else:
        with pytest.raises(ValueError, match="MEDIC_ALLOW_EXAMPLE_JOBS"):
            Settings()
