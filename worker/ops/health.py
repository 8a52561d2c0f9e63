"""`medic health --role ...`: the probe for containers that cannot do HTTP (or should not trust it).

Readiness (the default) may ask other services; `--live` asks only the process itself, so an
outage of Redis or the ledger never restarts every pod at once (worker/runtime/liveness.py):

- `--live`, api: GET /health/live answers 200; worker / control / beat: the process touched its
  liveness file (MEDIC_LIVENESS_FILE) within 5 heartbeats.

Readiness:

- api: GET /health/ready answers 200.
- worker / control: a worker main process on this host registered as a consumer within the
  presence TTL (its registration thread, worker/runtime/consumer.py, runs every heartbeat: a hung
  or dead main process stops it). Presence keys alone cannot tell: an idle worker has none.
- beat: the beat_alive tick is younger than 3 of its periods.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import httpx

from worker.broker import redis_keys
from worker.broker.celery_app import CONTROL_QUEUE
from worker.broker.counters import known_queues
from worker.broker.redis_client import get_redis
from worker.runtime import liveness
from worker.settings import get_settings


def _api(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url.rstrip('/')}/health/ready", timeout=5)
    return {"ok": response.status_code == 200, "status": response.status_code}


def _consumers_here(queues: list[str]) -> dict[str, Any]:
    """Fresh consumer registrations of this host (nodename `name@host:pid`), per queue."""
    host = socket.gethostname()
    since = time.time() - get_settings().presence_ttl_seconds
    pipe = get_redis().pipeline(transaction=False)
    for queue in queues:
        pipe.zrangebyscore(redis_keys.queue_consumers(queue), since, "+inf")
    found = {
        queue: [m for m in members if m.rsplit(":", 1)[0].split("@", 1)[-1] == host]
        for queue, members in zip(queues, pipe.execute(), strict=True)
    }
    found = {q: m for q, m in found.items() if m}
    return {"ok": bool(found), "host": host, "consuming": found}


def _beat() -> dict[str, Any]:
    tick = get_redis().get(redis_keys.beat_alive())
    age = None if tick is None else round(time.time() - float(tick), 1)
    limit = 3 * get_settings().beat_alive_seconds
    return {"ok": age is not None and age <= limit, "tick_age_s": age, "limit_s": limit}


def _touched() -> dict[str, Any]:
    file = liveness.path()
    age = liveness.age_s(file)
    limit = liveness.stale_after_s()
    return {"ok": age is not None and age <= limit, "file": str(file), "age_s": age, "limit_s": limit}


def live(role: str, *, api_url: str = "http://127.0.0.1:8000") -> dict[str, Any]:
    """{"role", "live": True, "ok", ...}: nothing but the process itself is asked."""
    detail: dict[str, Any]
    try:
        if role == "api":
            response = httpx.get(f"{api_url.rstrip('/')}/health/live", timeout=5)
            detail = {"ok": response.status_code == 200, "status": response.status_code}
        else:
            detail = _touched()
    except Exception as exc:  # noqa: BLE001 - a probe reports, it does not crash
        detail = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"role": role, "live": True, **detail}


def check(role: str, *, api_url: str = "http://127.0.0.1:8000") -> dict[str, Any]:
    """{"role", "ok", ...details}; an error is an unhealthy result, never an exception."""
    try:
        if role == "api":
            detail = _api(api_url)
        elif role == "beat":
            detail = _beat()
        elif role == "control":
            detail = _consumers_here([CONTROL_QUEUE])
        else:
            detail = _consumers_here(sorted({get_settings().default_queue, *known_queues()}))
    except Exception as exc:  # noqa: BLE001 - a probe reports, it does not crash
        detail = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"role": role, **detail}
