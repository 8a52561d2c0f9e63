"""`medic queues pause | resume | list`: the ledger written directly (no API), the state shown
by the API's GET /queues, unknown queues refused with nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import httpx
import sqlalchemy as sa

from tests import ROOT, ledger_view
from tests.conftest import KeyFactory
from worker.ledger import db
from worker.ledger.models import queue_controls

MEDIC = [sys.executable, "-m", "worker.ops.cli", "--log-level", "WARNING"]


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MEDIC, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


def _listed(env: dict[str, str]) -> dict[str, list[str]]:
    done = _run(["queues", "list"], env)
    assert done.returncode == 0, done.stderr
    header, *rows = [line.split("\t") for line in done.stdout.strip().splitlines()]
    assert header == ["queue", "state", "admission", "paused_at", "paused_by"]
    return {row[0]: row[1:] for row in rows}


def test_pause_list_resume(medic_env: dict[str, str], stack: str, make_key: KeyFactory) -> None:
    queue = f"q-cli-{uuid.uuid4().hex[:8]}"
    paused = _run(["queues", "pause", queue, "--refuse"], medic_env)
    assert paused.returncode == 0, paused.stderr
    state = json.loads(paused.stdout)
    assert state["paused"] is True and state["admission"] == "refuse" and state["paused_by"].startswith("cli:")
    assert _listed(medic_env)[queue][:2] == ["paused", "refuse"]
    assert "default" in _listed(medic_env)  # declared queues are listed, active

    _, admin = make_key("read,admin")
    queues = httpx.get(stack + "/queues", headers={"Authorization": f"Bearer {admin}"}).json()["queues"]
    shown = {q["queue"]: q for q in queues}[queue]
    assert shown["paused"] is True and shown["paused_admission"] == "refuse"

    resumed = _run(["queues", "resume", queue], medic_env)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["paused"] is False
    assert queue not in _listed(medic_env)  # not declared by name, no longer paused
    assert ledger_view.pause_decisions(queue) == ["pause", "resume"]


def test_an_unknown_queue_exits_2_and_writes_nothing(medic_env: dict[str, str]) -> None:
    for args in (["pause", "undeclared-queue"], ["resume", "medic.control"]):
        done = _run(["queues", *args], medic_env)
        assert done.returncode == 2, done.stdout
        assert "unknown queue" in done.stderr
    with db.connect() as conn:
        found = conn.scalar(
            sa.select(sa.func.count())
            .select_from(queue_controls)
            .where(queue_controls.c.queue.in_(["undeclared-queue", "medic.control"]))
        )
    assert found == 0
