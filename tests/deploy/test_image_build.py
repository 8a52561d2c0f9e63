"""deploy/Dockerfile really built with podman (worker/testing/image.py) and run against this host's
PostgreSQL and Redis (`--network host`), with this run's database and key prefixes: `medic health`,
`medic api`, `medic worker` running a job submitted through the containerised API, the image's
HEALTHCHECK, all as uid 10001. Root only (podman is not set up rootless here)."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.conftest import RUN_ID
from worker.testing import image
from worker.testing.processes import free_port, wait_for

# The first test pays for the build: a cold one (base and image) takes minutes, so this module's
# timeout is the build's; every wait on a container is bounded well below it.
pytestmark = [pytest.mark.image, pytest.mark.timeout(900)]
UID = "10001"
QUEUE = f"q-img-{RUN_ID}"  # declared by the `q-*` prefix of the test environment's MEDIC_QUEUES
Run = Callable[..., str]


@pytest.fixture(scope="module")
def built() -> str:
    """The image of this tree, built (podman's layer cache makes an unchanged tree's build quick)."""
    if reason := image.available():
        pytest.skip(reason)
    return image.ensure()


def _container_env(medic_env: dict[str, str]) -> list[str]:
    env = {k: v for k, v in medic_env.items() if k.startswith("MEDIC_") and not k.startswith("MEDIC_TEST_")}
    # the image holds medic, not tests/: its example jobs only; no metrics port (the host's may be taken)
    env |= {"MEDIC_JOB_MODULES": "worker.examples", "MEDIC_METRICS_PORT": "0"}
    return [arg for k, v in sorted(env.items()) for arg in ("--env", f"{k}={v}")]


@pytest.fixture(scope="module")
def run(built: str, medic_env: dict[str, str]) -> Iterator[Run]:
    """`run(name, *args)` starts a detached container of the image on the host network; each one
    started is removed at the end by its name."""
    started: list[str] = []

    def start(role: str, *args: str) -> str:
        name = f"medic-img-{RUN_ID}-{role}"
        started.append(name)
        image.podman("run", "--detach", "--name", name, "--network", "host", *_container_env(medic_env), built, *args)
        return name

    yield start
    for name in started:
        image.podman("rm", "--force", "--time", "5", name, check=False)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def api(run: Run) -> tuple[str, str]:
    """The image's API (name, URL): on 8000, the port the image's HEALTHCHECK asks, when it is free."""
    port = 8000 if _port_free(8000) else free_port()
    name = run("api", "api", "--host", "127.0.0.1", "--port", str(port))
    url = f"http://127.0.0.1:{port}"

    def live() -> bool:
        assert _running(name), image.podman("logs", name).stderr[-2000:]
        try:
            return httpx.get(f"{url}/health/live", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(live, timeout=60, interval=0.5, what="the image's API answering /health/live")
    return name, url


def _running(name: str) -> bool:
    return image.podman("inspect", "--format", "{{.State.Running}}", name).stdout.strip() == "true"


def _users(name: str) -> list[str]:
    """The host-side user of every process of a container (`podman top` reads /proc)."""
    out = image.podman("top", name, "huser", "args").stdout.splitlines()[1:]
    return [line.split()[0] for line in out if line.strip()]


def test_the_image_runs_as_uid_10001(built: str) -> None:
    out = image.podman("run", "--rm", "--entrypoint", "id", built, "-u").stdout.strip()
    assert out == UID


def test_medic_health_exits_0_on_a_healthy_api_and_1_on_none(
    built: str, api: tuple[str, str], medic_env: dict[str, str]
) -> None:
    _, url = api
    env = _container_env(medic_env)
    ok = image.podman(
        "run", "--rm", "--network", "host", *env, built, "health", "--role", "api", "--url", url, check=False
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads(ok.stdout)["ok"] is True
    nobody = f"http://127.0.0.1:{free_port()}"
    down = image.podman(
        "run", "--rm", "--network", "host", *env, built, "health", "--role", "api", "--url", nobody, check=False
    )
    assert down.returncode == 1, down.stdout + down.stderr


def test_the_api_answers_as_uid_10001(api: tuple[str, str]) -> None:
    name, url = api
    assert httpx.get(f"{url}/health/live", timeout=5).status_code == 200
    users = _users(name)
    assert users and set(users) == {UID}, users


def test_the_healthcheck_of_the_image_passes_on_its_api(api: tuple[str, str]) -> None:
    name, url = api
    if not url.endswith(":8000"):
        pytest.skip("port 8000 is taken on this host: the image's HEALTHCHECK asks the API there")
    result = image.podman("healthcheck", "run", name, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_job_submitted_to_the_api_runs_on_the_image_worker(
    run: Run, api: tuple[str, str], make_key: Callable[..., tuple[str, str]]
) -> None:
    _, url = api
    name = run("worker", "worker", "--queues", QUEUE, "--concurrency", "1", "--name", f"img{RUN_ID}")
    _, key = make_key()
    message = uuid.uuid4().hex
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as client:
        submitted = client.post("/jobs", json={"type": "examples.echo", "args": {"message": message}, "queue": QUEUE})
        assert submitted.status_code == 202, submitted.text

        def ended() -> dict[str, object] | None:
            assert _running(name), image.podman("logs", name).stderr[-2000:]
            job: dict[str, object] = client.get(f"/jobs/{submitted.json()['id']}").json()
            return job if job["state"] in ("succeeded", "failed", "dead") else None

        job = wait_for(ended, timeout=90, interval=0.5, what="the job run by the image's worker")
    assert job["state"] == "succeeded", job
    assert job["result"] == {"message": message}
    assert str(job["worker"]).startswith(f"img{RUN_ID}@"), job  # the image's worker, no other
    users = _users(name)
    assert len(users) >= 2 and set(users) == {UID}, users  # the main process and its prefork child
    live = image.podman("exec", name, "medic", "health", "--role", "worker", "--live", check=False)
    assert live.returncode == 0, live.stdout + live.stderr
