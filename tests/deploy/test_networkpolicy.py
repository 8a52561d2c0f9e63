"""deploy/k8s/networkpolicy.yaml lets in what it should and nothing else: each policy is read by a
small evaluator of NetworkPolicy's ingress rules (label selectors, namespace selectors, ports),
against the pods the manifests really make (kubernetes-validate checks the objects themselves,
tests/deploy/test_k8s.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from tests import ROOT

K8S = ROOT / "deploy" / "k8s"
NAMESPACE = "medic"


@dataclass(frozen=True)
class Pod:
    labels: dict[str, str]
    namespace: str = NAMESPACE
    namespace_labels: dict[str, str] = field(default_factory=dict)


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        value, op = labels.get(expr["key"]), expr["operator"]
        if op == "In" and value not in expr["values"]:
            return False
        if op == "NotIn" and value in expr["values"]:
            return False
        if op == "Exists" and value is None:
            return False
        if op == "DoesNotExist" and value is not None:
            return False
    return True


def _peer_admits(peer: dict[str, Any], source: Pod) -> bool:
    ns_sel, pod_sel = peer.get("namespaceSelector"), peer.get("podSelector")
    if "ipBlock" in peer:
        return False  # none used here; a source pod is not an address range
    ns_labels = {"kubernetes.io/metadata.name": source.namespace, **source.namespace_labels}
    in_ns = _matches(ns_sel, ns_labels) if ns_sel is not None else source.namespace == NAMESPACE
    return in_ns and (pod_sel is None or _matches(pod_sel, source.labels))


def _rule_admits(rule: dict[str, Any], source: Pod, port: int) -> bool:
    ports = rule.get("ports")
    if ports and not any(p.get("port") == port for p in ports):
        return False
    peers = rule.get("from")
    return not peers or any(_peer_admits(peer, source) for peer in peers)


def _policies() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / "networkpolicy.yaml").read_text()) if d]


def allowed(source: Pod, target: dict[str, str], port: int, policies: list[dict[str, Any]] | None = None) -> bool:
    """Ingress to a pod of `target` labels on `port`: open when no policy selects the pod; else
    allowed when one rule of a selecting policy admits it."""
    selecting = [p for p in (policies or _policies()) if _matches(p["spec"]["podSelector"], target)]
    if not selecting:
        return True
    return any(_rule_admits(rule, source, port) for p in selecting for rule in p["spec"].get("ingress", []))


def _template_labels(component: str) -> dict[str, str]:
    for f in sorted(K8S.glob("*.yaml")):
        for d in yaml.safe_load_all(f.read_text()):
            if d and d["kind"] == "Deployment" and d["metadata"]["labels"]["app.kubernetes.io/component"] == component:
                labels: dict[str, str] = d["spec"]["template"]["metadata"]["labels"]
                return labels
    raise AssertionError(component)


API, WORKER, CONTROL, FLOWER = (_template_labels(c) for c in ("api", "worker", "control", "flower"))
REDIS, POSTGRES = {"app.kubernetes.io/name": "redis"}, {"app.kubernetes.io/name": "postgresql"}
OUTSIDE = Pod({"app": "ingress-nginx"}, namespace="ingress-nginx")
PROMETHEUS = Pod({"app.kubernetes.io/name": "prometheus"}, namespace="monitoring")
STRANGER = Pod({"app": "someone-else"})  # another pod in the medic namespace
STRANGER_ELSEWHERE = Pod({"app.kubernetes.io/name": "medic"}, namespace="default")

CASES = [
    # (source, target, port, allowed)
    (OUTSIDE, API, 8000, True),
    (STRANGER, API, 8000, True),
    (OUTSIDE, WORKER, 9808, False),
    (STRANGER, WORKER, 9808, False),
    (OUTSIDE, CONTROL, 9809, False),
    (PROMETHEUS, WORKER, 9808, True),
    (PROMETHEUS, CONTROL, 9809, True),
    (OUTSIDE, FLOWER, 5555, False),
    (Pod(WORKER), REDIS, 6379, True),
    (Pod(API), REDIS, 6379, True),
    (Pod(CONTROL), POSTGRES, 5432, True),
    (STRANGER, REDIS, 6379, False),
    (STRANGER, POSTGRES, 5432, False),
    (STRANGER_ELSEWHERE, REDIS, 6379, False),
    (PROMETHEUS, REDIS, 6379, False),
    (OUTSIDE, POSTGRES, 5432, False),
]


@pytest.mark.parametrize(("source", "target", "port", "expected"), CASES)
def test_policy_matrix(source: Pod, target: dict[str, str], port: int, expected: bool) -> None:
    assert allowed(source, target, port) is expected


def test_without_the_policies_everything_would_be_open() -> None:
    """The evaluator can say no only because of the policies: with none, every case is allowed."""
    for source, target, port, _ in CASES:
        assert allowed(source, target, port, policies=[{"spec": {"podSelector": {"matchLabels": {"x": "never"}}}}])


def test_every_medic_pod_is_under_the_default_deny() -> None:
    (deny,) = [p for p in _policies() if p["metadata"]["name"] == "medic-default-deny-ingress"]
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
