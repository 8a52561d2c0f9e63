"""`medic up`: pick the ledger and the broker, migrate, reuse (or create) the dev key, start and
supervise every process, and print where each listens."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import amqp.exceptions
import httpx
import redis
import sqlalchemy as sa
from kombu import connection as kombu_connection
from kombu.exceptions import KombuError

from worker.ops import budget, processes
from worker.ops.process_scaler import ProcessScalerPool
from worker.ops.supervisor import Child, Supervisor
from worker.settings import (
    AMQP,
    DEFAULT_DATABASE_URL,
    DEFAULT_REDIS_URL,
    Settings,
    broker_kind,
    get_settings,
    reset_settings,
)

log = logging.getLogger("medic.up")

EXIT_OK = 0
EXIT_API_DID_NOT_START = 5
BROKER_CONNECT_TIMEOUT_S = 3.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _postgres_answers(url: str) -> bool:
    engine = sa.create_engine(url, connect_args={"connect_timeout": 2})
    try:
        with engine.connect():
            return True
    except sa.exc.OperationalError as exc:
        # "database does not exist" means the server answers: `medic db upgrade` creates it
        return "does not exist" in str(exc)
    finally:
        engine.dispose()


def choose_database() -> str:
    if "MEDIC_DATABASE_URL" in os.environ:
        return os.environ["MEDIC_DATABASE_URL"]
    if _postgres_answers(DEFAULT_DATABASE_URL):
        return DEFAULT_DATABASE_URL
    url = f"sqlite:///{Path.cwd() / 'medic.db'}"
    print(f"medic: no PostgreSQL at 127.0.0.1:5432; using the SQLite ledger {url} (single host only)")
    return url


class PrivateRedis:
    """A redis-server of our own, for a machine that has none running."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="medic-redis-")
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir],
            stdout=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def stop(self, *, keep_dir: bool = False) -> None:
        """Stop the server (it keeps nothing: no persistence); `keep_dir` allows a restart on the same port."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        if not keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def choose_redis() -> tuple[str, PrivateRedis | None]:
    if "MEDIC_REDIS_URL" in os.environ:
        return os.environ["MEDIC_REDIS_URL"], None
    try:
        redis.Redis.from_url(DEFAULT_REDIS_URL, socket_connect_timeout=2).ping()
        return DEFAULT_REDIS_URL, None
    except redis.RedisError:
        pass
    if shutil.which("redis-server") is None:
        raise SystemExit(
            "medic: no Redis at 127.0.0.1:6379 and no redis-server on PATH. Install Redis "
            "(Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis) or set MEDIC_REDIS_URL."
        )
    private = PrivateRedis()
    private.start()
    print(f"medic: no Redis at 127.0.0.1:6379; started a private redis-server at {private.url}")
    return private.url, private


def choose_broker(broker: str | None) -> str:
    """The broker the stack runs on: `--broker` (put in MEDIC_BROKER_URL for every child), else
    MEDIC_BROKER_URL, else "" (MEDIC_REDIS_URL's Redis). RabbitMQ is asked once before anything
    starts: a wrong URL is one clear line, not five children retrying in a loop.

    Raises:
        SystemExit: a URL medic cannot run on, or a RabbitMQ that does not answer or refuses us.
    """
    if broker is not None:
        os.environ["MEDIC_BROKER_URL"] = broker
    url = os.environ.get("MEDIC_BROKER_URL", "")
    if url and broker_kind(url) is None:
        raise SystemExit(
            f"medic: the broker {redacted(url)} is neither RabbitMQ (amqp://user:password@host:5672/vhost) "
            "nor Redis; leave it empty to run on MEDIC_REDIS_URL's Redis"
        )
    if broker_kind(url) == AMQP:
        try:
            conn: Any = kombu_connection.Connection(url, connect_timeout=BROKER_CONNECT_TIMEOUT_S)  # type: ignore[no-untyped-call]
            with conn:
                conn.connect()
        except (OSError, amqp.exceptions.AMQPError, KombuError) as exc:
            raise SystemExit(
                f"medic: RabbitMQ at {redacted(url)} did not let us in ({type(exc).__name__}: {exc}). "
                "Start it (rabbitmq-server -detached), create the vhost and its permissions "
                "(rabbitmqctl add_vhost / set_permissions), or pick another broker."
            ) from None
    return url


def _wait_for_api(url: str, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health/live", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def _children(
    s: Settings, *, api_port: int, flower_port: int, workers: int, concurrency: int, flower: bool
) -> list[Child]:
    pool = budget.worker_env(s)  # small pools for worker processes: the connection budget
    # the web console links to Flower: to the one started here, unless MEDIC_FLOWER_URL names another
    flower_link = {"MEDIC_FLOWER_URL": f"http://127.0.0.1:{flower_port}"} if flower and not s.flower_url else {}
    children = [Child("api", processes.api_cmd("127.0.0.1", api_port), env=flower_link)]
    children += [
        Child(f"worker-{i}", processes.worker_cmd(s.default_queue, concurrency, f"worker-{i}"), env=pool)
        for i in range(1, workers + 1)
    ]
    children += [Child("control", processes.control_cmd(), env=pool), Child("beat", processes.beat_cmd())]
    if flower:
        children.append(Child("flower", processes.flower_cmd(s, flower_port), env=processes.flower_env(s)))
    for child in children:
        child.argv = console_argv(child.name, child.argv)
        child.env = {**CONSOLE_ENV, **child.env}
    return children


# medic up's console: no per-task lines, no Celery root warning (a dev box often runs as root)
CONSOLE_ENV = {"MEDIC_LOG_QUIET": "true", "PYTHONWARNINGS": "ignore::UserWarning:celery.platforms"}


def _wait_for_workers(s: Settings, timeout_s: float = 60.0) -> None:
    """Until a worker of the default queue and the control worker are registered (ready); a slow
    machine can take tens of seconds to start Celery, so the wait is generous and says if it gave up."""
    from worker.broker.celery_app import CONTROL_QUEUE
    from worker.broker.presence import live_consumers

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if live_consumers(s.default_queue) and live_consumers(CONTROL_QUEUE):
                return
        except redis.RedisError:
            pass
        time.sleep(0.2)
    print(f"medic: the workers did not report ready within {timeout_s:.0f} s; see their lines above", flush=True)


def console_argv(name: str, argv: list[str]) -> list[str]:
    """One short console: each line prefixed by its process's name, Celery's start-up banner off
    (`celery --quiet`), library INFO chatter off (worker/logs.py)."""
    if argv[: len(processes.CELERY)] == processes.CELERY:
        argv = [*processes.CELERY[:3], "--quiet", *argv[3:]]
    return [sys.executable, "-m", "worker.ops.prefix", name, "--", *argv]


def redacted(url: str) -> str:
    """`url` with its password (if any) replaced by ***: the banner is read over shoulders and
    pasted into tickets."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:***" if parts.username else ":***"
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def _banner(s: Settings, *, api_url: str, flower_port: int | None, dev_key: str) -> str:
    lines = ["", "medic is up", f"  API      {api_url}", f"  docs     {api_url}/docs"]
    lines.append(f"  console  {api_url}/console  (sign in with the key below)")
    if flower_port is not None:
        lines.append(f"  Flower   http://127.0.0.1:{flower_port}  (user {s.flower_user}, MEDIC_FLOWER_PASSWORD)")
    lines += [
        f"  ledger   {redacted(s.database_url)}",
        *_broker_lines(s),
        f"  dev API key (tenant 'dev', scopes submit,read,admin; kept in {s.dev_key_file}):",
        dev_key,
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


def _broker_lines(s: Settings) -> list[str]:
    """Where the task messages go, and the Redis medic keeps its own state in when that differs."""
    kind = f"  (RabbitMQ, {s.rabbitmq_queue_type} queues)" if s.on_rabbitmq else ""
    lines = [f"  broker   {redacted(s.broker)}{kind}"]
    if s.broker != s.redis_url:
        lines.append(f"  redis    {redacted(s.redis_url)}  (counters, presence, admission)")
    return lines


def _write_private(path: Path, text: str) -> None:
    """Write `text` readable by this user only: created 0600 (never briefly wider), then renamed
    over the old file so a reader never sees half a key."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is ignored if tmp existed already
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def dev_key(path: Path) -> str:
    """The dev key of `medic up`: the one in `path` while the ledger still knows it (not revoked,
    tenant 'dev', admin), else a new one written to `path`. One key per ledger, not one per start."""
    from worker.ledger import apikeys, db

    raw = path.read_text().strip() if path.is_file() else ""
    with db.begin() as conn:
        known = apikeys.lookup(conn, raw) if raw else None
        if known is not None and known.tenant == "dev" and known.allows(apikeys.Scope.ADMIN):
            path.chmod(0o600)
            return raw
        raw = apikeys.create_key(conn, "dev", apikeys.parse_scopes("submit,read,admin"), "medic up")
        # inside the transaction: a file we cannot write leaves no orphan key behind
        _write_private(path, raw + "\n")
    return raw


def _prepare_ledger(database_url: str, key_file: str) -> str:
    """Migrate, and find or create the dev key."""
    from worker.ledger import db
    from worker.ledger.migrate import upgrade

    upgrade(database_url)
    key = dev_key(Path(key_file))
    db.dispose_engine()  # the children open their own connections
    return key


def run_stack(
    *, api_port: int, flower_port: int, workers: int, concurrency: int, flower: bool, broker: str | None = None
) -> int:
    choose_broker(broker)
    database_url = choose_database()
    redis_url, private_redis = choose_redis()
    os.environ["MEDIC_DATABASE_URL"] = database_url
    os.environ["MEDIC_REDIS_URL"] = redis_url
    os.environ.setdefault("MEDIC_JOB_MODULES", "worker.examples")  # the README's tour runs the demo jobs
    os.environ.setdefault("MEDIC_ALLOW_EXAMPLE_JOBS", "true")  # a stack on this host, not a deployment
    os.environ.setdefault("MEDIC_FLOWER_PASSWORD", "medic-dev")  # the banner names it; loopback only
    os.environ.setdefault("MEDIC_ALLOW_WEAK_SECRETS", "true")  # so is that password
    reset_settings()
    s = get_settings()
    try:
        key = _prepare_ledger(database_url, s.dev_key_file)
        supervisor = Supervisor(
            _children(
                s, api_port=api_port, flower_port=flower_port, workers=workers, concurrency=concurrency, flower=flower
            )
        )
        supervisor.start_all()
        api_url = f"http://127.0.0.1:{api_port}"
        if not _wait_for_api(api_url):
            print("medic: the API did not answer within 30 s; see the log above")
            supervisor.stop()
            return EXIT_API_DID_NOT_START
        _wait_for_workers(s)  # so the banner is the last thing the start prints
        print(_banner(s, api_url=api_url, flower_port=flower_port if flower else None, dev_key=key), flush=True)
        hooks = [ProcessScalerPool(supervisor, s.default_queue)] if s.scaler == "process" else []
        supervisor.run(on_tick=hooks)
        return EXIT_OK
    finally:
        if private_redis is not None:
            private_redis.stop()
