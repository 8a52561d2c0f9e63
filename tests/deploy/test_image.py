"""deploy/Dockerfile, .dockerignore and deploy/constraints.txt, checked by structure (no Docker
engine here): each check is also fed a broken Dockerfile to show it can fail."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
COMPILERS = ("build-essential", "gcc", "g++", "clang", "libpq-dev", "python3-dev")
ROLES_HEALTH = "medic health"


def _stages(text: str) -> list[list[dict[str, str]]]:
    # A parser without a fileobj reads and WRITES ./Dockerfile: always hand it one in memory.
    parser = DockerfileParser(fileobj=io.StringIO(text))
    stages: list[list[dict[str, str]]] = []
    for item in parser.structure:
        if item["instruction"] == "FROM":
            stages.append([])
        if stages and item["instruction"] != "COMMENT":
            stages[-1].append(item)
    return stages


def dockerfile_problems(text: str) -> list[str]:
    """What is wrong with a Dockerfile against the rules of deploy/: empty when it is right."""
    stages = _stages(text)
    problems: list[str] = []
    if len(stages) < 2:
        return ["not multi-stage"]
    final = stages[-1]
    runs = " ".join(i["value"] for i in final if i["instruction"] == "RUN")
    problems += [f"compiler {c} in the final stage" for c in COMPILERS if c in runs.split()]
    users = [i["value"] for i in final if i["instruction"] == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("final stage runs as root")
    checks = [i["value"] for i in final if i["instruction"] == "HEALTHCHECK"]
    if not checks or ROLES_HEALTH not in checks[-1].replace('", "', " ").replace('"', ""):
        problems.append("no HEALTHCHECK running `medic health`")
    entry = [i["value"] for i in final if i["instruction"] == "ENTRYPOINT"]
    if not entry or "medic" not in entry[-1]:
        problems.append("ENTRYPOINT is not `medic` (one image for every role)")
    if not any(i["instruction"] == "COPY" and "--from=" in i["value"] for i in final):
        problems.append("final stage copies nothing from a build stage")
    runs_all = [i["value"] for s in stages for i in s if i["instruction"] == "RUN"]
    installs = [part.split("&&")[0] for v in runs_all for part in v.split("pip install")[1:]]
    if not installs or not all("-c deploy/constraints.txt" in v for v in installs):
        problems.append("a pip install without the pinned constraints")
    return problems


def test_the_dockerfile_follows_the_rules() -> None:
    assert dockerfile_problems(DOCKERFILE.read_text()) == []


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("USER 10001:10001", "USER root", "final stage runs as root"),
        ('CMD ["medic", "health", "--role", "api"]', 'CMD ["true"]', "no HEALTHCHECK running `medic health`"),
        ("COPY --from=build /opt/medic /opt/medic",
         "RUN apt-get install -y gcc\nCOPY --from=build /opt/medic /opt/medic", "compiler gcc in the final stage"),
        ("-c deploy/constraints.txt -r /tmp", "-r /tmp", "a pip install without the pinned constraints"),
    ],
)  # fmt: skip
def test_a_broken_dockerfile_is_caught(old: str, new: str, problem: str) -> None:
    text = DOCKERFILE.read_text()
    assert old in text
    assert problem in dockerfile_problems(text.replace(old, new))


def test_every_copied_path_exists_and_is_not_ignored() -> None:
    """A COPY of a path that .dockerignore drops (or that does not exist) breaks the build."""
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for stage in _stages(DOCKERFILE.read_text()):
        for item in stage:
            if item["instruction"] != "COPY" or "--from=" in item["value"]:
                continue
            for src in item["value"].split()[:-1]:
                assert (ROOT / src).exists(), src
                assert src not in ignored and src.split("/")[0] not in ignored, src
    assert {".git", ".venv", "tests", ".env"} <= ignored


def _pins() -> dict[str, str]:
    lines = (ROOT / "deploy" / "constraints.txt").read_text().splitlines()
    pairs = [line.split("==") for line in lines if line and not line.startswith("#")]
    return {canonicalize_name(name): version for name, version in pairs}


def test_constraints_pin_every_dependency_of_pyproject_within_its_range() -> None:
    sys.path.insert(0, str(ROOT / "deploy"))
    try:
        from pin import project_requirements
    finally:
        sys.path.pop(0)
    pins = _pins()
    for req in project_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not pinned: run deploy/pin.py"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {req}"


def test_a_dependency_added_to_pyproject_without_a_pin_is_caught(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "deploy"))
    try:
        from pin import project_requirements
    finally:
        sys.path.pop(0)
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\ndependencies = ["celery>=99", "left-pad"]\n')
    pins = _pins()
    reqs: list[Requirement] = project_requirements(pyproject)
    assert not reqs[0].specifier.contains(pins["celery"])
    assert canonicalize_name(reqs[1].name) not in pins


def test_constraints_pin_everything_the_dependencies_pull_in() -> None:
    """The closure of pyproject's dependencies in this environment (deploy/pin.py) is pinned, by
    name: versions may move between environments, a missing transitive pin may not."""
    sys.path.insert(0, str(ROOT / "deploy"))
    try:
        from pin import closure, project_requirements
    finally:
        sys.path.pop(0)
    missing = set(closure(project_requirements())) - set(_pins())
    assert not missing, f"not pinned: {sorted(missing)}: run deploy/pin.py"
