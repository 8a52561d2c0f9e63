"""deploy/k8s: every built-in object through `kubernetes-validate --strict`, the KEDA objects
through cloudcoil-models-keda (with unknown fields refused), then the rules a rolling update and
autoscaling rely on. Each validator is also fed a broken manifest."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cloudcoil.models.keda import v1alpha1

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BIN = Path(sys.executable).parent
CUSTOM_KINDS = {"ScaledObject", "Kustomization"}


def _docs() -> list[dict[str, Any]]:
    return [d for f in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]


def _kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in _docs() if d["kind"] == kind]


def _validate(*files: Path, version: str = "1.37.0") -> subprocess.CompletedProcess[str]:
    exe = shutil.which("kubernetes-validate", path=str(BIN)) or "kubernetes-validate"
    argv = [exe, "--strict", "--no-warn", "-k", version, *map(str, files)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("version", ["1.30.0", "1.37.0"])  # the oldest docs/deploy.md supports, the newest bundled
def test_every_builtin_object_is_valid_in_strict_mode(version: str) -> None:
    files = [
        f for f in sorted(K8S.glob("*.yaml"))
        if all(d["kind"] not in CUSTOM_KINDS for d in yaml.safe_load_all(f.read_text()))
    ]  # fmt: skip
    run = _validate(*files, version=version)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("passed for resource") == sum(1 for d in _docs() if d["kind"] not in CUSTOM_KINDS)


def test_kubernetes_validate_refuses_an_unknown_field(tmp_path: Path) -> None:
    broken = tmp_path / "worker.yaml"
    text = (K8S / "worker-default.yaml").read_text()
    broken.write_text(text.replace("terminationGracePeriodSeconds: 30", "terminationGracePeriod: 30"))
    run = _validate(broken)
    assert run.returncode != 0
    assert "terminationGracePeriod" in run.stdout + run.stderr


def keda_problems(doc: dict[str, Any]) -> list[str]:
    """Validate with the KEDA models; the models ignore unknown fields, so a field lost on the
    round trip is reported as unknown."""
    obj = v1alpha1.ScaledObject.model_validate(doc)
    back = obj.model_dump(by_alias=True, exclude_none=True, mode="json")
    return _lost(doc, back, "")


def _lost(given: Any, kept: Any, where: str) -> list[str]:
    if isinstance(given, dict):
        if not isinstance(kept, dict):
            return [where or "/"]
        return [
            p for k, v in given.items() for p in (_lost(v, kept[k], f"{where}.{k}") if k in kept else [f"{where}.{k}"])
        ]
    if isinstance(given, list):
        return [p for i, (a, b) in enumerate(zip(given, kept, strict=False)) for p in _lost(a, b, f"{where}[{i}]")]
    return []


def test_keda_objects_are_valid() -> None:
    scaled = _kind("ScaledObject")
    assert scaled
    for doc in scaled:
        assert keda_problems(doc) == [], doc["metadata"]["name"]


@pytest.mark.parametrize(
    ("path", "value", "error"),
    [
        (("spec", "minReplicas"), 1, "unknown"),  # the HPA's name, not KEDA's minReplicaCount
        (("spec", "maxReplicaCount"), "twenty", "invalid"),
    ],
)
def test_keda_validation_refuses_a_broken_object(path: tuple[str, str], value: Any, error: str) -> None:
    doc = _kind("ScaledObject")[0]
    doc[path[0]][path[1]] = value
    if error == "unknown":
        assert ".spec.minReplicas" in keda_problems(doc)
    else:
        with pytest.raises(ValueError):
            keda_problems(doc)


def test_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    present = {f.name for f in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == present


def _containers(dep: dict[str, Any]) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = dep["spec"]["template"]["spec"]["containers"]
    return containers


def test_every_deployment_has_probes_and_runs_as_non_root() -> None:
    for dep in _kind("Deployment"):
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in _containers(dep):
            assert "livenessProbe" in c, dep["metadata"]["name"]
            if dep["metadata"]["labels"]["app.kubernetes.io/component"] != "beat":
                assert "readinessProbe" in c, dep["metadata"]["name"]


def test_workers_hand_back_their_jobs_before_a_rolling_update_kills_them() -> None:
    from worker.runtime.shutdown import stop_within_s
    from worker.settings import Settings

    workers = [d for d in _kind("Deployment") if d["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"]
    assert workers
    for dep in workers:
        pod = dep["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] >= stop_within_s(Settings(profile="production"))
        stop = _containers(dep)[0]["lifecycle"]["preStop"]["exec"]["command"]
        assert "kill -TERM 1" in stop[-1]  # Celery's warm shutdown, waited for
        assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_each_worker_deployment_has_a_pdb_and_a_scaledobject_on_desired_slots() -> None:
    workers = {d["metadata"]["name"] for d in _kind("Deployment") if "worker" in d["metadata"]["name"]}
    targets = {s["spec"]["scaleTargetRef"]["name"]: s for s in _kind("ScaledObject")}
    assert workers == set(targets)
    pdbs = {p["metadata"]["name"] for p in _kind("PodDisruptionBudget")}
    assert workers <= pdbs
    for s in targets.values():
        trigger = s["spec"]["triggers"][0]
        assert trigger["type"] == "prometheus"
        assert "medic_queue_desired_slots" in trigger["metadata"]["query"]


def test_api_scales_on_cpu() -> None:
    (hpa,) = _kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "medic-api"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
