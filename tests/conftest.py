"""Test harness: every run gets its own PostgreSQL database and its own Redis key prefixes,
created here and dropped at the end, so two runs on one machine never collide."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests import ROOT
from worker.ops.stack import PrivateRedis
from worker.testing.processes import Processes
from worker.testing.servers import PG_ADMIN_URL, delete_keys, pg_admin_execute

RUN_ID = uuid.uuid4().hex[:10]
REDIS_URL = os.environ.get("MEDIC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
JOB_MODULES = ["worker.examples", "tests.testjobs"]


def _database_url(name: str) -> str:
    return str(sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False))


@pytest.fixture(scope="session")
def medic_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of this run: its database, its key prefixes, the fast profile."""
    db_name = f"medic_test_{RUN_ID}"
    env = {
        "MEDIC_DATABASE_URL": _database_url(db_name),
        "MEDIC_REDIS_URL": REDIS_URL,
        "MEDIC_KEY_PREFIX": f"mt{RUN_ID}:",
        "MEDIC_BROKER_KEY_PREFIX": f"mtb{RUN_ID}:",
        "MEDIC_PROFILE": "fast",
        "MEDIC_JOB_MODULES": ",".join(JOB_MODULES),
        "MEDIC_ALLOW_EXAMPLE_JOBS": "true",  # a test may build production settings in this environment
        # one tenant per test fills queues to their watermarks; tests of the share set their own
        "MEDIC_TENANT_QUEUE_SHARE": "1",
        # queues are declared: the names and prefixes the tests use
        "MEDIC_QUEUES": "declared-extra,nobody-consumes-this,restart-q,lost-q,void-q,"
        "q-*,gate-*,quota-*,inflight-*,flood-*,scale-*,chaos*,inproc-*",
        "MEDIC_TEST_RECORD_REDIS_URL": REDIS_URL,
        "PYTHONPATH": str(ROOT),
    }
    os.environ.update(env)
    from worker.broker.celery_app import reconfigure
    from worker.ledger.migrate import upgrade
    from worker.runtime.registry import load_job_modules
    from worker.settings import reset_settings

    reset_settings()
    reconfigure()
    load_job_modules(JOB_MODULES)
    upgrade(env["MEDIC_DATABASE_URL"])
    yield {**os.environ, **env}

    from worker.ledger.db import dispose_engine

    dispose_engine()
    pg_admin_execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
    delete_keys(REDIS_URL, env["MEDIC_KEY_PREFIX"])
    delete_keys(REDIS_URL, env["MEDIC_BROKER_KEY_PREFIX"])


@pytest.fixture(scope="session")
def pg_engine(medic_env: dict[str, str]) -> sa.Engine:
    from worker.ledger.db import get_engine

    return get_engine()


@pytest.fixture
def procs(medic_env: dict[str, str], tmp_path: Path) -> Iterator[Processes]:
    """Real processes owned by one test."""
    p = Processes(medic_env, tmp_path)
    yield p
    p.stop_all()


@pytest.fixture(scope="session")
def stack(medic_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One API and one worker (2 prefork children) shared by the integration tests; returns the API URL."""
    p = Processes(medic_env, tmp_path_factory.mktemp("stack"))
    p.worker("shared", queues="default", concurrency=2)
    _, url = p.api("shared-api")
    yield url
    p.stop_all()


KeyFactory = Callable[..., tuple[str, str]]


@pytest.fixture
def make_key(medic_env: dict[str, str]) -> KeyFactory:
    """Create an API key for a fresh tenant: returns (tenant, key)."""
    from worker.ledger import apikeys, db

    def make(scopes: str = "submit,read,admin", tenant: str | None = None) -> tuple[str, str]:
        tenant = tenant or f"t-{uuid.uuid4().hex[:8]}"
        with db.begin() as conn:
            return tenant, apikeys.create_key(conn, tenant, apikeys.parse_scopes(scopes))

    return make


@pytest.fixture
def client(stack: str, make_key: KeyFactory) -> Iterator[httpx.Client]:
    """An HTTP client of the shared API, authenticated as a fresh tenant (`client.tenant`)."""
    tenant, key = make_key()
    with httpx.Client(base_url=stack, headers={"Authorization": f"Bearer {key}"}, timeout=15) as c:
        c.tenant = tenant  # type: ignore[attr-defined]
        yield c


@contextlib.contextmanager
def switched_env(overrides: dict[str, str]) -> Iterator[None]:
    """Point this test process at other settings (a database, a Redis, prefixes), then back."""
    from worker.broker.celery_app import reconfigure
    from worker.ledger.db import dispose_engine
    from worker.settings import reset_settings

    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    reset_settings()
    reconfigure()
    try:
        yield
    finally:
        dispose_engine()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        reset_settings()
        reconfigure()


@contextlib.contextmanager
def own_ledger(medic_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """A database and key prefixes of their own until the end (this process switched to them)."""
    suffix = uuid.uuid4().hex[:6]
    db_name = f"medic_test_{RUN_ID}_{suffix}"
    env = {
        "MEDIC_DATABASE_URL": _database_url(db_name),
        "MEDIC_KEY_PREFIX": f"mt{RUN_ID}{suffix}:",
        "MEDIC_BROKER_KEY_PREFIX": f"mtb{RUN_ID}{suffix}:",
    }
    from worker.ledger.migrate import upgrade

    upgrade(env["MEDIC_DATABASE_URL"])
    with switched_env(env):
        yield {**medic_env, **env}
    pg_admin_execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
    delete_keys(REDIS_URL, env["MEDIC_KEY_PREFIX"])
    delete_keys(REDIS_URL, env["MEDIC_BROKER_KEY_PREFIX"])


@pytest.fixture(scope="module")
def private_ledger(medic_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """A database and key prefixes of this module's own, for tests whose loops scan every job."""
    with own_ledger(medic_env) as env:
        yield env


@pytest.fixture(scope="module")
def inproc_worker(medic_env: dict[str, str]) -> Iterator[str]:
    """An embedded Celery worker in this test process, on a queue of this module's own: returns the
    queue name (declared by the `inproc-*` prefix in MEDIC_QUEUES). Module-scoped: stopping it
    waits out the consumer's 1 s BRPOP, which per test cost more than the jobs themselves.

    For jobs that only need claim -> run -> finalize. The threads pool (2 threads, so a duplicate
    delivery can race its twin) has no child process: no hard time limit, no worker_lost, no
    after-fork resets. Tests of those keep real `celery worker` processes (`procs`, `stack`).
    Its own queue because two workers on one Redis DB and queue take each other's messages.
    """
    from celery.contrib.testing.worker import start_worker

    from worker.broker.celery_app import app
    from worker.runtime.heartbeat import get_heartbeat

    queue = f"inproc-{uuid.uuid4().hex[:10]}"
    # perform_ping_check would need celery's own `celery.ping` task registered on our app
    with start_worker(
        app, pool="threads", concurrency=2, perform_ping_check=False, queues=[queue], shutdown_timeout=30
    ) as w:
        yield queue
    # The heartbeat thread this worker started in the test process would go on announcing a
    # worker that is gone (the API's readiness counts workers by presence).
    get_heartbeat(w.hostname).stop()


# pytest-celery 1.3 is loaded (it re-exports celery.contrib.pytest's fixtures), but its own
# `celery_setup` family runs Celery nodes in Docker containers: the node fixtures below are
# parametrized over pytest_celery.defaults.ALL_CELERY_WORKERS/BROKERS/BACKENDS and reach
# `docker.from_env()` (pytest_docker_tools) as soon as a test asks for one. There is no Docker
# engine here, so they are switched off: each cluster fixture returns None (pytest-celery's
# documented way to disable a cluster), and a test asking for a node fails at once with a pointer
# instead of a DockerException from deep inside requests. See docs/testing.md.
_NO_DOCKER = (
    "pytest-celery's {} fixture runs Celery in Docker containers, and there is no Docker engine here:"
    " use the `inproc_worker` fixture (an embedded worker) or real processes (`procs`)"
)


@pytest.fixture
def celery_worker_cluster() -> None:
    return None


@pytest.fixture
def celery_broker_cluster() -> None:
    return None


@pytest.fixture
def celery_backend_cluster() -> None:
    return None


@pytest.fixture
def celery_worker() -> None:
    pytest.fail(_NO_DOCKER.format("celery_worker"), pytrace=False)


@pytest.fixture
def celery_broker() -> None:
    pytest.fail(_NO_DOCKER.format("celery_broker"), pytrace=False)


@pytest.fixture
def celery_backend() -> None:
    pytest.fail(_NO_DOCKER.format("celery_backend"), pytrace=False)


@pytest.fixture
def celery_setup() -> None:
    pytest.fail(_NO_DOCKER.format("celery_setup"), pytrace=False)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A redis-server of this test's own, to stop and restart (the shared one is never touched)."""
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()


_prebuild: list[subprocess.Popen[bytes]] = []


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """When the image tests are selected and can run, start the image's build now, in the
    background, while the other tests run: a cold build (debootstrap, then pip in the image) takes
    minutes, most of them waiting on downloads. tests/deploy/test_image_build.py then waits for
    it on the builder's lock (worker/testing/image.py) and finds every layer cached."""
    from worker.testing import image

    if not any(item.get_closest_marker("image") for item in items) or image.available():
        return
    # the file is closed here once the child has its own copy of it
    with open(Path(tempfile.gettempdir()) / f"medic-image-prebuild-{RUN_ID}.log", "wb") as log:
        command = [sys.executable, "-m", "worker.testing.image"]
        _prebuild.append(subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for build in _prebuild:  # a run that ends early (-x, a crash) does not leave a build behind
        if build.poll() is None:
            build.terminate()
            try:
                build.wait(timeout=30)
            except subprocess.TimeoutExpired:
                build.kill()
