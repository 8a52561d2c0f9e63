"""Progress (issue 20, part 4), with real workers: `current_job().progress()` is kept on the job
(`GET /jobs/{id}`), sent on the stream, and written at most once per heartbeat, however often a
job reports."""

from __future__ import annotations

import datetime as dt
import json
import math
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx
from websockets.sync.client import connect

from tests import ROOT
from tests.api_client import events, submit, wait_state
from tests.conftest import KeyFactory
from worker.settings import get_settings
from worker.testing.processes import Processes

MODULES = "worker.examples,tests.testjobs,tests.runtime.canceljobs"


def _stream(url: str, key: str, job_id: str, timeout: float = 30) -> list[dict[str, Any]]:
    """Every stream message of the job until it ends (replayed from 0, then live)."""
    ws_url = url.replace("http://", "ws://") + f"/jobs/stream?job_id={job_id}&since=0"
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    with connect(ws_url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        while (left := deadline - time.monotonic()) > 0:
            message = json.loads(ws.recv(timeout=left))
            if message.get("type") == "transition":
                got.append(message)
                if message["to_state"] in ("succeeded", "dead", "cancelled"):
                    return got
    raise AssertionError(f"job {job_id} did not end on the stream: {got}")


def test_steps_reports_progress_on_the_job_and_the_stream(stack: str, make_key: KeyFactory) -> None:
    """`examples.steps` reports after each step: the stream carries `progress` events whose
    fractions only grow and end at 1.0, and the job keeps the latest (with its time)."""
    _, key = make_key()
    with httpx.Client(base_url=stack, headers={"Authorization": f"Bearer {key}"}, timeout=15) as client:
        job = submit(client, "examples.steps", {"steps": 4, "seconds_per_step": 0.4})
        messages = _stream(stack, key, job["id"])
        final = client.get(f"/jobs/{job['id']}").json()
    reports = [json.loads(m["detail"]) for m in messages if m["reason"] == "progress"]
    assert reports, messages
    fractions = [r["fraction"] for r in reports]
    assert fractions == sorted(set(fractions)) and fractions[-1] == 1.0
    assert reports[-1]["message"] == "step 4 of 4"
    assert all(m["from_state"] == m["to_state"] == "running" for m in messages if m["reason"] == "progress")
    assert final["state"] == "succeeded" and final["result"] == {"steps": 4}
    assert (final["progress"]["fraction"], final["progress"]["message"]) == (1.0, "step 4 of 4")
    assert final["progress"]["at"]


def test_a_thousand_reports_cost_at_most_one_ledger_write_per_heartbeat(procs: Processes, make_key: KeyFactory) -> None:
    """A job that calls progress() 1,000 times in a second (then runs one more) writes at most
    one progress event per heartbeat of its run (plus the last one at its end), and the job
    keeps the latest report."""
    queue = f"q-progress-{uuid.uuid4().hex[:8]}"
    procs.worker("chatty", queues=queue, concurrency=1, MEDIC_JOB_MODULES=MODULES)
    _, url = procs.api("chatty-api", MEDIC_JOB_MODULES=MODULES)
    _, key = make_key()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=15) as client:
        job = submit(client, "cancel.chatty", {"calls": 1000, "over_s": 1.0, "then_s": 1.0}, queue=queue)
        final = wait_state(client, job["id"], timeout=30)
        written = [e for e in events(client, job["id"]) if e["reason"] == "progress"]
    assert final["state"] == "succeeded", final
    ran_s = (_at(final["finished_at"]) - _at(final["started_at"])).total_seconds()
    beats = math.ceil(ran_s / get_settings().heartbeat_seconds) + 1  # a beat at each end of the run
    assert 1 <= len(written) <= beats + 1, f"{len(written)} progress writes in {ran_s:.2f}s (at most {beats + 1})"
    assert json.loads(written[-1]["detail"]) == {"fraction": 1.0, "message": "call 1000"}
    assert (final["progress"]["fraction"], final["progress"]["message"]) == (1.0, "call 1000")


def _at(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp)


def test_submit_wait_prints_progress_lines(medic_env: dict[str, str], stack: str, make_key: KeyFactory) -> None:
    """`medic submit --wait` shows each progress event the stream carries as a line of its own."""
    _, key = make_key()
    env = {**medic_env, "MEDIC_API_KEY": key, "MEDIC_API_URL": stack}
    args = json.dumps({"steps": 3, "seconds_per_step": 0.6})
    done = subprocess.run(
        [sys.executable, "-m", "worker.ops.cli", "submit", "examples.steps", "--args", args, "--wait"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    job_id = json.loads(done.stdout[: done.stdout.index("\n}") + 2])["id"]
    lines = [line for line in done.stderr.splitlines() if " -> " not in line and line.startswith(job_id[:8])]
    assert lines and lines[-1] == f"{job_id[:8]} running 100% step 3 of 3", done.stderr
