"""`medic submit --wait` follows the job over WS /jobs/stream: every transition, in order."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import httpx

from tests import ROOT
from tests.conftest import KeyFactory


def test_submit_wait_shows_every_transition_from_the_stream(
    medic_env: dict[str, str], stack: str, make_key: KeyFactory
) -> None:
    _, key = make_key()
    env = {**medic_env, "MEDIC_API_KEY": key, "MEDIC_API_URL": stack}
    args = json.dumps({"tag": uuid.uuid4().hex, "failures": 1})
    done = subprocess.run(
        [sys.executable, "-m", "worker.ops.cli", "submit", "tests.fail_then_succeed", "--args", args, "--wait"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert '"state": "succeeded"' in done.stdout
    lines = [line for line in done.stderr.splitlines() if " -> " in line]
    job_id = httpx.get(f"{stack}/jobs", headers={"Authorization": f"Bearer {key}"}).json()["jobs"][0]["id"]
    events = httpx.get(f"{stack}/jobs/{job_id}/events", headers={"Authorization": f"Bearer {key}"}).json()["events"]
    # polling could only ever see states; the stream shows each transition, the retry included
    expected = [
        f"{job_id[:8]} {e['from_state'] or '-'} -> {e['to_state']} (attempt {e['attempt']}, {e['reason']})"
        for e in events
    ]
    assert lines == expected


def test_without_a_stream_submit_wait_falls_back_to_polling(stack: str, make_key: KeyFactory) -> None:
    """A stream that cannot be opened (here: nothing listens) makes follow_stream give up at once
    and say so (False), and the poll that follows still sees the job end."""
    import time

    from worker.ops.follow import follow_stream, poll
    from worker.testing.processes import free_port

    _, key = make_key()
    job = httpx.post(
        f"{stack}/jobs",
        json={"type": "examples.echo", "args": {"message": "x"}},
        headers={"Authorization": f"Bearer {key}"},
    ).json()
    started = time.monotonic()
    shown: list[object] = []
    assert not follow_stream(f"http://127.0.0.1:{free_port()}", key, job["id"], started + 30, shown.append)
    assert time.monotonic() - started < 5 and shown == []
    with httpx.Client(base_url=stack, headers={"Authorization": f"Bearer {key}"}) as client:
        assert poll(client, job["id"], time.monotonic() + 30, interval=0.1)["state"] == "succeeded"
