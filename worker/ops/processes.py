"""The command line of each medic process, in one place: `medic <piece>` execs it and
`medic up` supervises it."""

from __future__ import annotations

import os
import sys
import tempfile

from worker.broker.celery_app import CONTROL_QUEUE
from worker.settings import Settings, get_settings

CELERY = [sys.executable, "-m", "celery", "-A", "worker.broker.celery_app:app"]


def api_cmd(host: str, port: int, workers: int = 1, ws_ping: tuple[float, float] | None = None) -> list[str]:
    """`ws_ping`: (interval, timeout) of WS /jobs/stream keep-alive pings; uvicorn sends them and
    closes a peer that does not answer (1011). Default: MEDIC_WS_PING_SECONDS / _TIMEOUT_SECONDS."""
    s = get_settings()
    interval, timeout = ws_ping or (s.ws_ping_seconds, s.ws_ping_timeout_seconds)
    return [
        sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app",
        "--host", host, "--port", str(port), "--workers", str(workers), "--no-access-log",
        "--ws", "websockets-sansio", "--ws-ping-interval", str(interval), "--ws-ping-timeout", str(timeout),
        # a client's only message is its key: nothing larger is read, before or after auth
        "--ws-max-size", str(s.ws_max_message_bytes),
    ]  # fmt: skip


def worker_cmd(queues: str, concurrency: int, name: str, loglevel: str = "INFO") -> list[str]:
    """No `-E`: task events cost a third of a worker's main process; Flower switches them on
    remotely while it runs, and the control tasks never send them (celery_app.QuietControlTasks)."""
    return [
        *CELERY, "worker", "-Q", queues, "-c", str(concurrency), "-n", f"{name}@%h",
        "--loglevel", loglevel, "--without-gossip", "--without-mingle",
    ]  # fmt: skip


def control_cmd(name: str = "control", loglevel: str = "INFO") -> list[str]:
    return worker_cmd(CONTROL_QUEUE, 2, name, loglevel)


def beat_cmd(loglevel: str = "INFO") -> list[str]:
    schedule = os.path.join(tempfile.gettempdir(), f"medic-beat-{os.getpid()}")
    return [*CELERY, "beat", "--loglevel", loglevel, "--schedule", schedule]


def flower_cmd(s: Settings, port: int, address: str = "127.0.0.1") -> list[str]:
    """Flower's command line; its password goes in `flower_env`, never here (argv is public in `ps`)."""
    return [*CELERY, "flower", f"--port={port}", f"--address={address}"]


def flower_env(s: Settings) -> dict[str, str]:
    """Flower reads FLOWER_<OPTION> variables (flower/command.py apply_env_options); `basic_auth`
    is a list split on ',' there, so the settings refuse a comma in the user or password.

    Raises:
        SystemExit: no password (Flower without basic auth shows every job's arguments).
    """
    if not s.flower_password:
        raise SystemExit("medic flower: set MEDIC_FLOWER_PASSWORD (Flower does not run without basic auth)")
    return {"FLOWER_BASIC_AUTH": f"{s.flower_user}:{s.flower_password}"}
