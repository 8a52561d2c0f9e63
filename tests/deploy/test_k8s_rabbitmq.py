"""deploy/k8s-rabbitmq, the overlay that puts medic on RabbitMQ: rendered by the real kustomize
(`kubectl kustomize`, offline), every built-in object of the result through
`kubernetes-validate --strict`, the KEDA objects through cloudcoil-models-keda, then what the
overlay must change in the base, and nothing else."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from cloudcoil.models.keda import v1alpha1

from tests.deploy.test_k8s import _validate, keda_problems
from tests.deploy.test_networkpolicy import Pod, allowed

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "k8s"
OVERLAY = ROOT / "deploy" / "k8s-rabbitmq"
KUBECTL = shutil.which("kubectl")
needs_kustomize = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with its built-in kustomize) is not installed")


def _render(directory: Path) -> list[dict[str, Any]]:
    assert KUBECTL
    run = subprocess.run([KUBECTL, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return [d for d in yaml.safe_load_all(run.stdout) if d]


def _by_key(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


@pytest.fixture(scope="module")
def rendered() -> dict[tuple[str, str], dict[str, Any]]:
    return _by_key(_render(OVERLAY))


@needs_kustomize
def test_every_builtin_object_of_the_overlay_is_valid_in_strict_mode(
    rendered: dict[tuple[str, str], dict[str, Any]], tmp_path: Path
) -> None:
    builtin = [d for (kind, _), d in rendered.items() if kind not in {"ScaledObject", "TriggerAuthentication"}]
    files = []
    for i, doc in enumerate(builtin):
        files.append(tmp_path / f"{i}.yaml")
        files[-1].write_text(yaml.safe_dump(doc))
    run = _validate(*files)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("passed for resource") == len(builtin)


@needs_kustomize
def test_a_broken_patch_is_refused_by_kustomize(tmp_path: Path) -> None:
    shutil.copytree(BASE, tmp_path / "k8s")
    overlay = shutil.copytree(OVERLAY, tmp_path / "k8s-rabbitmq")
    assert _render(overlay)  # the copy renders as it is ...
    patch = overlay / "keda-rabbitmq.yaml"
    patch.write_text(patch.read_text().replace("path: /spec/triggers", "path: /spec/no/such/triggers"))
    run = subprocess.run([str(KUBECTL), "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0  # ... and not once its patch misses
    assert "/spec/no/such/triggers" in run.stderr, run.stderr


@needs_kustomize
def test_the_worker_scales_on_its_rabbitmq_queue_with_medics_broker_url(
    rendered: dict[tuple[str, str], dict[str, Any]],
) -> None:
    scaled = rendered[("ScaledObject", "medic-worker-default")]
    assert keda_problems(scaled) == []
    (trigger,) = scaled["spec"]["triggers"]  # in place of the Prometheus query, not beside it
    assert trigger["type"] == "rabbitmq"
    assert trigger["metadata"] == {
        "protocol": "amqp", "queueName": "default", "mode": "QueueLength", "value": "4", "activationValue": "0"
    }  # fmt: skip
    worker = rendered[("Deployment", "medic-worker-default")]
    args = worker["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("-Q") + 1] == "default" and args[args.index("-c") + 1] == "4", args  # one slot a message
    auth_name = trigger["authenticationRef"]["name"]
    auth = rendered[("TriggerAuthentication", auth_name)]
    v1alpha1.TriggerAuthentication.model_validate(auth)
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref == {"parameter": "host", "name": "medic-secrets", "key": "MEDIC_BROKER_URL"}
    assert auth["metadata"]["namespace"] == scaled["metadata"]["namespace"] == "medic"


@needs_kustomize
def test_the_configmap_names_the_queue_type_and_keeps_redis(rendered: dict[tuple[str, str], dict[str, Any]]) -> None:
    from worker.settings import Settings

    data = rendered[("ConfigMap", "medic-config")]["data"]
    base = _by_key(_render(BASE))[("ConfigMap", "medic-config")]["data"]
    assert data == {**base, "MEDIC_RABBITMQ_QUEUE_TYPE": "quorum", "MEDIC_BROKER_CONFIRM_TIMEOUT_SECONDS": "5"}
    Settings(rabbitmq_queue_type=data["MEDIC_RABBITMQ_QUEUE_TYPE"])  # a value the settings accept


@needs_kustomize
def test_the_overlay_changes_nothing_else_in_the_base(rendered: dict[tuple[str, str], dict[str, Any]]) -> None:
    base = _by_key(_render(BASE))
    changed = {("ConfigMap", "medic-config"), ("ScaledObject", "medic-worker-default")}
    added = {("TriggerAuthentication", "medic-rabbitmq"), ("NetworkPolicy", "medic-rabbitmq-from-medic-and-keda")}
    assert set(rendered) == set(base) | added
    for key in set(base) - changed:
        assert rendered[key] == base[key], key


def test_the_secret_template_is_the_bases_plus_the_broker_url() -> None:
    from worker.settings import Settings

    base = yaml.safe_load((BASE / "secret.example.yaml").read_text())
    overlay = yaml.safe_load((OVERLAY / "secret.example.yaml").read_text())
    url = overlay["stringData"].pop("MEDIC_BROKER_URL")
    assert overlay == base
    assert Settings(broker_url=url).on_rabbitmq
    listed = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())["resources"]
    assert "secret.example.yaml" not in listed  # a template, never applied with its placeholders


def test_rabbitmq_admits_medic_and_the_keda_operator_only() -> None:
    policies = [d for d in yaml.safe_load_all((OVERLAY / "networkpolicy.yaml").read_text()) if d]
    base = [d for d in yaml.safe_load_all((BASE / "networkpolicy.yaml").read_text()) if d]
    rabbit = {"app.kubernetes.io/name": "rabbitmq"}
    medic = Pod({"app.kubernetes.io/name": "medic", "app.kubernetes.io/component": "worker"})
    keda = Pod({"app.kubernetes.io/name": "keda-operator"}, namespace="keda")
    assert allowed(medic, rabbit, 5672, base + policies)
    assert allowed(keda, rabbit, 5672, base + policies)
    assert not allowed(Pod({"app.kubernetes.io/name": "other"}), rabbit, 5672, base + policies)
    assert not allowed(Pod({"app.kubernetes.io/name": "keda-operator"}), rabbit, 5672, base + policies)  # not keda's ns
    assert not allowed(medic, rabbit, 15672, base + policies), "the management UI: port-forward only"
