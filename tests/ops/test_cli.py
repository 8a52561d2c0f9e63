"""The `medic` command: help, keys, submit --wait, and `medic up` supervising the whole stack."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests import ROOT
from tests.conftest import KeyFactory
from worker.testing.processes import free_port, wait_for

MEDIC = [sys.executable, "-m", "worker.ops.cli"]


def _run(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MEDIC, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_help_lists_every_command(medic_env: dict[str, str]) -> None:
    out = _run(["--help"], medic_env).stdout
    for command in ("up", "api", "worker", "control", "beat", "flower", "submit", "db", "keys"):
        assert re.search(rf"^\s+{command}\s", out, re.MULTILINE), command


def test_keys_create_prints_the_key_alone_on_the_last_line(medic_env: dict[str, str], stack: str) -> None:
    done = _run(["keys", "create", "--tenant", "cli-tenant", "--scopes", "submit,read"], medic_env)
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"mk_[A-Za-z0-9_-]{40,}", key)
    assert httpx.get(stack + "/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    bad = _run(["keys", "create", "--tenant", "x", "--scopes", "root"], medic_env)
    assert bad.returncode != 0


def test_submit_wait_follows_the_job_to_its_end(medic_env: dict[str, str], stack: str, make_key: KeyFactory) -> None:
    _, key = make_key()
    env = {**medic_env, "MEDIC_API_KEY": key, "MEDIC_API_URL": stack}
    ok = _run(["submit", "examples.echo", "--args", '{"message": "cli"}', "--wait"], env)
    assert ok.returncode == 0, ok.stderr
    assert '"state": "succeeded"' in ok.stdout
    failed = _run(["submit", "examples.fail", "--wait"], env)
    assert failed.returncode == 4
    assert '"state": "dead"' in failed.stdout


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    stack = [pid]
    while stack:
        current = stack.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                kids = [int(p) for p in (task / "children").read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
            for kid in kids:
                if kid not in found:
                    found.add(kid)
                    stack.append(kid)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


def test_medic_up_runs_supervises_and_stops_cleanly(medic_env: dict[str, str], tmp_path: Path) -> None:
    """Given `medic up`, When a job is submitted with the printed key, Then it succeeds; When a
    worker is killed, Then it is restarted; When Ctrl-C, Then no process is left behind."""
    api_port, flower_port = free_port(), free_port()
    log = open(tmp_path / "up.log", "w+")  # noqa: SIM115
    up = subprocess.Popen(
        [*MEDIC, "up", "--api-port", str(api_port), "--flower-port", str(flower_port)],
        env={**medic_env, "MEDIC_DEV_KEY_FILE": str(tmp_path / "dev-key")},
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        text = wait_for(lambda: "Ctrl-C stops everything" in (t := (tmp_path / "up.log").read_text()) and t, 60, 0.2)
        key = re.search(r"^(mk_\S+)$", text, re.MULTILINE)
        assert key, text
        api = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", headers={"Authorization": f"Bearer {key[1]}"})
        with api:
            job = api.post("/jobs", json={"type": "examples.echo", "args": {"message": "up"}}).json()
            done = wait_for(lambda: (j := api.get(f"/jobs/{job['id']}").json())["state"] == "succeeded" and j, 30, 0.1)
            assert done["result"] == {"message": "up"}
        flower = f"http://127.0.0.1:{flower_port}"
        wait_for(lambda: _answers(flower + "/healthcheck"), 30, 0.2, "flower up")
        assert httpx.get(flower + "/api/workers").status_code == 401
        assert httpx.get(flower + "/api/workers", auth=("medic", "medic-dev")).status_code == 200
        assert (tmp_path / "dev-key").read_text().strip() == key[1]
        cmdlines = [_cmdline(pid) for pid in _descendants(up.pid)]
        assert cmdlines and not [c for c in cmdlines if "medic-dev" in c], cmdlines  # no password in `ps`

        worker_pid = int(re.search(r"started worker-1 \(pid (\d+)\)", text)[1])  # type: ignore[index]
        os.killpg(worker_pid, signal.SIGKILL)
        wait_for(lambda: (tmp_path / "up.log").read_text().count("started worker-1") == 2, 30, 0.2, "restart")

        family = _descendants(up.pid)
        assert len(family) >= 6, family  # api, worker (+children), control (+children), beat, flower
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
        wait_for(lambda: not [p for p in family if _alive(p)], 20, 0.2, "every child gone")
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
        for pid in _descendants(up.pid):
            os.kill(pid, signal.SIGKILL)
        log.close()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
