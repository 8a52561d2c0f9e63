"""`medic up` on a bare machine: a SQLite ledger when PostgreSQL does not answer, a private
redis-server when Redis does not, and a clear message when neither can be had."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from tests import ROOT
from worker.ops import stack
from worker.ops.stack import PrivateRedis
from worker.testing.processes import free_port, wait_for


def test_no_postgres_means_a_sqlite_ledger_in_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MEDIC_DATABASE_URL", raising=False)
    monkeypatch.setattr(stack, "DEFAULT_DATABASE_URL", f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/medic")
    monkeypatch.chdir(tmp_path)
    assert stack.choose_database() == f"sqlite:///{tmp_path / 'medic.db'}"
    assert "no PostgreSQL" in capsys.readouterr().out


def test_no_redis_means_a_private_redis_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDIC_REDIS_URL", raising=False)
    monkeypatch.setattr(stack, "DEFAULT_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    url, private = stack.choose_redis()
    assert private is not None
    try:
        assert redis.Redis.from_url(url).ping()
    finally:
        private.stop()


def test_no_redis_and_no_redis_server_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MEDIC_REDIS_URL", raising=False)
    monkeypatch.setattr(stack, "DEFAULT_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: no redis-server
    with pytest.raises(SystemExit, match="apt-get install redis-server"):
        stack.choose_redis()


def test_the_whole_stack_runs_on_a_sqlite_ledger(medic_env: dict[str, str], tmp_path: Path) -> None:
    """Given `medic up` on SQLite and a private Redis, When a job is submitted, Then it succeeds."""
    server = PrivateRedis()
    server.start()
    env = {**medic_env, "MEDIC_DATABASE_URL": f"sqlite:///{tmp_path / 'medic.db'}", "MEDIC_REDIS_URL": server.url}
    port = free_port()
    log_path = tmp_path / "up.log"
    with open(log_path, "w+") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "worker.ops.cli", "up", "--api-port", str(port), "--no-flower"],
            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            text = wait_for(lambda: "Ctrl-C stops everything" in (t := log_path.read_text()) and t, 60, 0.2)
            key = re.search(r"^(mk_\S+)$", text, re.MULTILINE)
            assert key and "ledger   sqlite:///" in text
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key[1]}"}) as c:
                job = c.post("/jobs", json={"type": "examples.echo", "args": {"message": "sqlite"}}).json()
                done = wait_for(lambda: (j := c.get(f"/jobs/{job['id']}").json())["state"] == "succeeded" and j, 30)
                assert done["result"] == {"message": "sqlite"}
        finally:
            up.send_signal(signal.SIGINT)
            up.wait(timeout=60)
            server.stop()
