"""`medic up` on RabbitMQ: `--broker amqp://...` (or MEDIC_BROKER_URL) runs the whole stack on it,
the banner names it with its password hidden, and a RabbitMQ that does not let medic in stops
`medic up` at once with one clear line, before any child starts."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import ROOT
from worker.testing.processes import free_port, wait_for
from worker.testing.servers import delete_keys

MEDIC = [sys.executable, "-m", "worker.ops.cli"]


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=60).stdout


@pytest.fixture
def vhost() -> Iterator[str]:
    """A RabbitMQ vhost of this test's own on the shared server, deleted afterwards."""
    name = f"mtup{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        rabbitmqctl("delete_vhost", name)


def test_medic_up_runs_a_job_on_rabbitmq(medic_env: dict[str, str], tmp_path: Path, vhost: str) -> None:
    """Given a vhost, When `medic up --broker amqp://guest:guest@.../vhost`, Then the banner names
    the broker without its password, a job submitted with the printed key succeeds, and its queue
    is a durable quorum queue in that vhost."""
    url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    api_port, run = free_port(), uuid.uuid4().hex[:8]
    own_prefixes = {"MEDIC_KEY_PREFIX": f"mtu{run}:", "MEDIC_BROKER_KEY_PREFIX": f"mtub{run}:"}
    out = tmp_path / "up.log"
    with open(out, "w") as log:
        up = subprocess.Popen(
            [*MEDIC, "up", "--api-port", str(api_port), "--no-flower", "--broker", url],
            env={**medic_env, **own_prefixes, "MEDIC_DEV_KEY_FILE": str(tmp_path / "key"), "MEDIC_METRICS_PORT": "0"},
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            text = wait_for(lambda: "Ctrl-C stops everything" in (t := out.read_text()) and t, 90, 0.2, "banner")
            assert f"  broker   amqp://guest:***@127.0.0.1:5672/{vhost}  (RabbitMQ, quorum queues)\n" in text, text
            assert f"  redis    {medic_env['MEDIC_REDIS_URL']}  (counters, presence, admission)\n" in text, text
            assert "guest:guest" not in text
            key = re.search(r"^(mk_\S+)$", text, re.MULTILINE)
            assert key, text
            headers = {"Authorization": f"Bearer {key[1]}"}
            with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", headers=headers) as api:
                job = api.post("/jobs", json={"type": "examples.echo", "args": {"message": "rabbit"}}).json()
                done = wait_for(lambda: (j := api.get(f"/jobs/{job['id']}").json())["state"] == "succeeded" and j, 30)
            assert done["result"] == {"message": "rabbit"}
            queues = rabbitmqctl("list_queues", "-p", vhost, "--no-table-headers", "name", "type", "durable")
            assert ["default", "quorum", "true"] in [line.split() for line in queues.splitlines()], queues
        finally:
            up.send_signal(signal.SIGINT)
            up.wait(timeout=60)
            for prefix in own_prefixes.values():
                delete_keys(medic_env["MEDIC_REDIS_URL"], prefix)


@pytest.mark.parametrize(
    ("how", "url", "secret"),
    [
        ("--broker", "amqp://guest:s3cret@127.0.0.1:{port}/medic", "s3cret"),  # nothing listens there
        ("MEDIC_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/mtup-no-such-vhost", "guest"),
    ],
    ids=["not-listening", "no-such-vhost"],
)
def test_medic_up_refuses_a_rabbitmq_that_does_not_let_it_in(
    medic_env: dict[str, str], tmp_path: Path, how: str, url: str, secret: str
) -> None:
    """Given a RabbitMQ URL nothing answers at (or a vhost that is not there), When `medic up`,
    Then it exits non-zero, naming the broker with its password hidden, and starts nothing."""
    url = url.format(port=free_port())
    argv, env = [*MEDIC, "up", "--api-port", str(free_port()), "--no-flower"], dict(medic_env)
    if how == "--broker":
        argv += ["--broker", url]
    else:
        env["MEDIC_BROKER_URL"] = url
    env["MEDIC_DEV_KEY_FILE"] = str(tmp_path / "key")
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    said = done.stdout + done.stderr
    assert done.returncode != 0, said
    shown = url.replace(f"guest:{secret}@", "guest:***@")
    assert f"medic: RabbitMQ at {shown} did not let us in" in said, said
    assert f":{secret}@" not in said, said
    assert "started " not in said and not (tmp_path / "key").exists(), "nothing started, no key made"
