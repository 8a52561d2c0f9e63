"""One medic deployment across namespace hosts: PostgreSQL and Redis on `data`, the API on `api`,
the control worker and beat on `control`, a celery worker (prefork, 2 children) on each of
`w1`..`w3`, the load on `client`. Every process is started with `ip netns exec` and tracked by
pid; `close()` stops them all and removes the namespaces, whatever state the run is in.

Settings: MEDIC_PROFILE=production (leases, heartbeats, presence, recover period are the
production defaults of the code under test), with two loop settings shortened so a Redis restart's
lost messages are re-sent within a short run: MEDIC_LOST_AFTER_SECONDS=15 (default 300) and
MEDIC_RECONCILE_PERIOD_SECONDS=5 (default 15).

Worker hosts reach PostgreSQL through their own delay proxy (tests/nemesis/delayproxy.py) on
127.0.0.1, so the nemesis can put latency on that link; Redis directly. Not Redis through the proxy:
a forwarder accepts a connection and then closes it while Redis is down, where a real host refuses
it, and that made every worker die at a Redis restart instead of some (docs/nemesis.md).
API and control connect directly."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tests import ROOT
from tests.nemesis.checker import LedgerEvent
from tests.nemesis.netns import Network
from tests.nemesis.schedule import WORKERS
from tests.nemesis.servers import PG_PORT, DataPostgres, DataRedis
from worker.ops import processes
from worker.testing.processes import Proc, wait_for

HOSTS = ["data", "api", "control", *WORKERS, "client"]
API_PORT = 8000
PROXY_PG = 15432
SETTINGS = {
    "MEDIC_PROFILE": "production",
    "MEDIC_JOB_MODULES": "tests.nemesis.jobs",
    "MEDIC_LOST_AFTER_SECONDS": "15",
    "MEDIC_RECONCILE_PERIOD_SECONDS": "5",
    "MEDIC_LOG_QUIET": "true",
}

# what the run's processes will use, read by the code under test in their environment
SHOW_SETTINGS = """
import json
from worker.settings import get_settings
s = get_settings()
names = ["profile", "lease_seconds", "heartbeat_seconds", "presence_ttl_seconds", "recover_period_seconds",
         "reconcile_period_seconds", "lost_after_seconds"]
print(json.dumps({n: getattr(s, n) for n in names}))
"""


def _base_env() -> dict[str, str]:
    """This process's environment without any MEDIC_* (a pytest session sets its own ledger)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIC_") and not k.startswith("NEMESIS_")}
    return {**env, **SETTINGS, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore::UserWarning:celery.platforms"}


class Cluster:
    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        run_dir.chmod(0o755)  # the postgres user must reach its cluster's folder inside
        self.logs = run_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        (run_dir / "hosts").mkdir(exist_ok=True)
        self.net: Network | None = None
        self.pg: DataPostgres | None = None
        self.redis: DataRedis | None = None
        self.procs: dict[str, Proc] = {}  # role -> its current process
        self.retired: list[Proc] = []
        self.api_key = ""

    # ------------------------------------------------------------------------------ set up

    def start(self) -> None:
        self.net = Network.create(HOSTS)
        data = self.net.hosts["data"].addr
        self.pg, self.redis = DataPostgres(self.net, self.dir), DataRedis(self.net, self.dir)
        self.pg.start()
        self.redis.start()
        env = {**_base_env(), "MEDIC_DATABASE_URL": self.pg.url(), "MEDIC_REDIS_URL": self.redis.url()}
        cli = [sys.executable, "-m", "worker.ops.cli", "--log-level", "WARNING"]
        subprocess.run([*cli, "db", "upgrade"], env=env, check=True, capture_output=True, timeout=120)
        keys = subprocess.run(
            [*cli, "keys", "create", "--tenant", "nemesis", "--scopes", "submit,read"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.api_key = keys.stdout.strip().splitlines()[-1]
        self.settings = json.loads(
            subprocess.run(
                [sys.executable, "-c", SHOW_SETTINGS], env=env, check=True, capture_output=True, text=True, timeout=60
            ).stdout
        )
        self.net_env = {
            **_base_env(),
            "MEDIC_DATABASE_URL": self.pg.url(data),
            "MEDIC_REDIS_URL": self.redis.url(data),
        }
        for w in WORKERS:
            self.start_proxy(w)
        self.start_proc("api", "api", processes.api_cmd(self.net.hosts["api"].addr, API_PORT))
        self.start_proc("control", "control", processes.control_cmd("control", "INFO"))
        self.start_proc("beat", "control", processes.beat_cmd("INFO"))
        for w in WORKERS:
            self.start_worker(w, wait=False)
        for role in ["api", "control", *WORKERS]:
            self.wait_ready(role)

    @property
    def api_url(self) -> str:
        assert self.net is not None
        return f"http://{self.net.hosts['api'].addr}:{API_PORT}"

    def host_env(self, host: str) -> dict[str, str]:
        env = {**self.net_env, "NEMESIS_HOST": host}
        if host in WORKERS:
            env["MEDIC_DATABASE_URL"] = f"postgresql+psycopg2://postgres@127.0.0.1:{PROXY_PG}/medic"
        return env

    def start_proc(self, role: str, host: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        assert self.net is not None
        old = self.procs.get(role)
        if old is not None:
            self.retired.append(old)
        proc = Proc(role, self.net.exec_argv(host, argv), env or self.host_env(host), self.logs)
        self.procs[role] = proc
        return proc

    def start_proxy(self, host: str) -> Proc:
        assert self.net is not None
        data = self.net.hosts["data"].addr
        argv = [
            sys.executable,
            "-m",
            "tests.nemesis.delayproxy",
            str(self.delay_file(host)),
            f"{PROXY_PG}:{data}:{PG_PORT}",
        ]
        proc = self.start_proc(f"proxy-{host}", host, argv)
        wait_for(lambda: "proxy ready" in proc.log() or not proc.alive(), 30, 0.05, f"proxy on {host}")
        return proc

    def delay_file(self, host: str) -> Path:
        return self.dir / "hosts" / f"{host}.delay"

    def start_worker(self, host: str, wait: bool = True) -> Proc:
        proc = self.start_proc(host, host, processes.worker_cmd("default", 2, host, "INFO"))
        if wait:
            self.wait_ready(host)
        return proc

    def wait_ready(self, role: str, timeout: float = 90) -> None:
        proc = self.procs[role]
        marker = "Application startup complete" if role == "api" else "ready."
        wait_for(lambda: marker in proc.log() or not proc.alive(), timeout, 0.1, f"{role} ready")
        assert proc.alive(), proc.log()[-3000:]

    # ----------------------------------------------------------------------------- reading

    def engine(self) -> sa.Engine:
        assert self.pg is not None
        return sa.create_engine(self.pg.url(), pool_pre_ping=True, connect_args={"connect_timeout": 5})

    def ledger(self, job_ids: list[str]) -> tuple[dict[str, str], list[LedgerEvent]]:
        """States of the jobs, and every event of them (over the unix socket)."""
        engine = self.engine()
        try:
            with engine.connect() as conn:
                states = {str(r.id): r.state for r in conn.execute(sa.text("SELECT id, state FROM jobs"))}
                rows = conn.execute(
                    sa.text("SELECT job_id, to_state, reason, delivery_id, attempt, at FROM job_events ORDER BY id")
                )
                events = [
                    LedgerEvent(
                        str(r.job_id), r.to_state, r.reason, str(r.delivery_id), int(r.attempt), r.at.timestamp()
                    )
                    for r in rows
                ]
        finally:
            engine.dispose()
        wanted = set(job_ids)
        return {j: s for j, s in states.items() if j in wanted}, [e for e in events if e.job in wanted]

    def unfinished(self, job_ids: list[str]) -> int:
        """How many of these jobs are not succeeded yet (a ledger read that tolerates an outage)."""
        try:
            states, _ = self.ledger(job_ids)
        except sa.exc.SQLAlchemyError:
            return len(job_ids)
        return sum(1 for j in job_ids if states.get(j) != "succeeded")

    def now_utc(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    # ----------------------------------------------------------------------------- tear down

    def all_procs(self) -> list[Proc]:
        return [*self.retired, *self.procs.values()]

    def close(self) -> None:
        """Stop every process by pid (SIGCONT first: a stopped one cannot exit), then the servers,
        then the namespaces. Runs to the end whatever fails on the way."""
        for proc in self.all_procs():
            with contextlib.suppress(Exception):
                proc.kill_group(signal.SIGCONT)
                for child in proc.children():
                    os.kill(child, signal.SIGCONT)
        for proc in reversed(self.all_procs()):
            with contextlib.suppress(Exception):
                proc.stop(timeout=5)
        for server in (self.redis, self.pg):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.destroy()
        if self.net is not None:
            self.net.destroy()

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
