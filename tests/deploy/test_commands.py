"""Every `medic ...` command line in deploy/ (Dockerfile CMD and HEALTHCHECK, compose commands and
healthchecks, Kubernetes args and exec probes) parses with the real CLI: a renamed option or role
breaks a container at start, which nothing else here would notice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from worker.ops.cli import main

ROOT = Path(__file__).resolve().parents[2]


def parse(argv: list[str]) -> str:
    """Parse argv as `medic` would, without running it; return the subcommand's name."""
    ctx = main.make_context("medic", list(argv))
    with ctx:
        name, cmd, rest = main.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        assert cmd is not None and name is not None
        if isinstance(cmd, click.Group):
            sub = cmd.make_context(name, rest, parent=ctx)
            name2, cmd2, rest2 = cmd.resolve_command(sub, [*sub._protected_args, *sub.args])
            assert cmd2 is not None
            cmd2.make_context(name2 or "", rest2, parent=sub)
            return f"{name} {name2}"
        cmd.make_context(name, rest, parent=ctx)
        return name


def _dockerfile_commands() -> list[list[str]]:
    import io

    parser = DockerfileParser(fileobj=io.StringIO((ROOT / "deploy" / "Dockerfile").read_text()))
    entry = json.loads(next(i["value"] for i in parser.structure if i["instruction"] == "ENTRYPOINT"))
    cmd = json.loads(next(i["value"] for i in parser.structure if i["instruction"] == "CMD"))
    check = next(i["value"] for i in parser.structure if i["instruction"] == "HEALTHCHECK")
    assert entry == ["medic"]
    return [cmd, json.loads(check.split("CMD", 1)[1])[1:]]


def _compose_commands() -> list[list[str]]:
    data = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    out = []
    for svc in data["services"].values():
        if str(svc.get("image", "")).startswith("${MEDIC_IMAGE"):
            out.append(svc["command"])
        test = svc.get("healthcheck", {}).get("test", [])
        if test[1:2] == ["medic"]:
            out.append(test[2:])
    return out


def _k8s_commands() -> list[list[str]]:
    out: list[list[str]] = []
    for f in (ROOT / "deploy" / "k8s").glob("*.yaml"):
        for doc in yaml.safe_load_all(f.read_text()):
            spec: dict[str, Any] = (doc or {}).get("spec", {}).get("template", {}).get("spec", {})
            for c in spec.get("containers", []):
                out.append(c["args"])
                for probe in ("readinessProbe", "livenessProbe"):
                    command = c.get(probe, {}).get("exec", {}).get("command")
                    if command:
                        assert command[0] == "medic"
                        out.append(command[1:])
    return out


ALL = _dockerfile_commands() + _compose_commands() + _k8s_commands()


def test_every_role_is_deployed() -> None:
    names = {parse(argv) for argv in ALL}
    assert {"api", "worker", "control", "beat", "flower", "db upgrade", "health"} <= names


@pytest.mark.parametrize("argv", ALL, ids=[" ".join(a) for a in ALL])
def test_command_parses_with_the_real_cli(argv: list[str]) -> None:
    parse(argv)


@pytest.mark.parametrize("argv", [["health", "--role", "scheduler"], ["worker", "--queue", "default"], ["serve"]])
def test_a_wrong_command_is_caught(argv: list[str]) -> None:
    with pytest.raises(click.UsageError):
        parse(argv)
