"""The cluster-wide gauges, computed once per health period by the health_and_alerts loop.

Queue depth, watermarks, rates, oldest queued job, consumers, loop ages, Redis memory, PostgreSQL
connections: each costs a Redis or ledger read, so the loop takes them once, the alert rules
judge them, and the snapshot is stored in Redis for every API process's /metrics to serve. A
scrape is then one GET, whatever the fleet's size, and never walks the ledger.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import sqlalchemy as sa

from worker.broker import inspect, presence, redis_keys
from worker.broker.counters import known_queues
from worker.broker.presence import live_consumers
from worker.broker.redis_client import get_redis
from worker.clock import seconds
from worker.control import admission
from worker.control.loop import loop_stats
from worker.ledger import db, queries
from worker.settings import Settings, get_settings

Snapshot = dict[str, Any]

# Connections each medic process holds checked out, as the server sees them: a pooled connection
# waiting in its pool is `idle`; one a caller holds is `active` or `idle in transaction`. Every
# medic engine names itself `medic-<pid>` (worker/ledger/db.py), so this is the pool use of
# every process of the fleet in one query, with no cost on the path of a job.
BUSY_BY_PROCESS = (
    "SELECT application_name, count(*) FROM pg_stat_activity WHERE application_name LIKE 'medic-%' "
    "AND state <> 'idle' GROUP BY application_name ORDER BY count(*) DESC LIMIT 20"
)

# Connection slots in use: client backends only (the checkpointer, WAL writer and the other
# background processes are rows of pg_stat_activity too, but take no max_connections slot).
CLIENT_CONNECTIONS = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"


def loop_periods(s: Settings) -> dict[str, float]:
    """Every loop beat schedules, with its period: a loop not run for 3 periods is stale."""
    return {
        "recover_stuck": s.recover_period_seconds,
        "enforce_timeouts": s.timeout_period_seconds,
        "reconcile_broker": s.reconcile_period_seconds,
        "apply_backpressure": s.backpressure_period_seconds,
        "autoscale": s.autoscale_period_seconds,
    }


def _queue(queue: str, queued: int, oldest: dt.datetime | None, now: dt.datetime) -> dict[str, Any]:
    r = get_redis()
    wm = admission.watermarks(queue)
    gate = r.hgetall(redis_keys.admission(queue))
    rates = r.hgetall(redis_keys.rates(queue))
    scale = r.hgetall(redis_keys.scale(queue))
    return {
        "depth": inspect.depth(queue),
        "queued": queued,
        "high_watermark": wm.high,
        "low_watermark": wm.low,
        "shedding": int(gate.get("state") == admission.SHEDDING),
        "arrival_rate": float(rates.get("arrival", 0)),
        "drain_rate": float(rates.get("drain", 0)),
        "desired_slots": int(scale["desired"]) if "desired" in scale else None,
        "oldest_queued_age_seconds": None if oldest is None else max(0.0, (now - oldest).total_seconds()),
        "consumers": len(live_consumers(queue, now.timestamp())),
    }


def _ledger(now: dt.datetime) -> tuple[dict[str, int], dict[str, dt.datetime], int, dict[str, Any]]:
    with db.connect() as conn:
        pg: dict[str, Any] = {}
        # The server's view first: a ledger slowed by locks would hold the jobs reads below, and
        # the pools would look idle by the time they answer.
        if conn.dialect.name == "postgresql":
            busy = conn.execute(sa.text(BUSY_BY_PROCESS)).all()
            pg["busy_by_process"] = {str(app): int(n) for app, n in busy}
            pg["connections"] = int(conn.scalar(sa.text(CLIENT_CONNECTIONS)) or 0)
            pg["max_connections"] = int(conn.scalar(sa.text("SHOW max_connections")) or 0)
        queued = {q: n for state, q, n in queries.live_counts_by_queue(conn) if state == "queued"}
        oldest = queries.oldest_queued_by_queue(conn)
        dead = queries.dead_since(conn, now - seconds(60))
    return queued, oldest, dead, pg


def _redis() -> dict[str, Any]:
    info = get_redis().info("memory")
    return {
        "used_memory_bytes": int(info.get("used_memory", 0)),
        "maxmemory_bytes": int(info.get("maxmemory", 0)),
        "maxmemory_policy": str(info.get("maxmemory_policy", "")),
    }


API_LATENCY_FRESH_S = 30.0  # API processes publish every 5 s (api/slow.py); older ones are gone
API_MIN_SAMPLES = 20  # a p95 of three requests says nothing


def _api_processes(now: float) -> tuple[dict[str, float], dict[str, float]]:
    """From every API process that published lately: its p95 (ms; with enough requests to
    judge) and the share of its last 5 s its ledger pool was used up."""
    key = redis_keys.api_latency()
    p95: dict[str, float] = {}
    pool_full: dict[str, float] = {}
    for process, raw in get_redis().hgetall(key).items():
        value = json.loads(raw)
        if now - float(value["at"]) > API_LATENCY_FRESH_S:
            get_redis().hdel(key, process)  # a process that stopped: forget it
            continue
        if int(value["n"]) >= API_MIN_SAMPLES:
            p95[process] = float(value["p95_ms"])
        pool_full[f"api:{process}"] = float(value.get("pool_full", 0.0))
    return p95, pool_full


def take(now: dt.datetime) -> Snapshot:
    """Measure everything once. A ledger outage leaves its part out, never the rest."""
    s = get_settings()
    snap: Snapshot = {"at": now.timestamp(), "redis": _redis()}
    get_redis().set(redis_keys.ops_watch_since(), now.timestamp(), nx=True)
    snap["watching_since"] = float(get_redis().get(redis_keys.ops_watch_since()) or now.timestamp())
    try:
        queued, oldest, dead, pg = _ledger(now)
        snap.update(ledger_up=1, dead_last_minute=dead, postgres=pg)
    except Exception as exc:  # noqa: BLE001 - reported as ledger_up 0; the Redis gauges still count
        queued, oldest = {}, {}
        snap.update(ledger_up=0, ledger_error=str(exc)[:300])
    names = set(known_queues()) | set(queued)
    snap["queues"] = {q: _queue(q, queued.get(q, 0), oldest.get(q), now) for q in sorted(names)}
    tick = get_redis().get(redis_keys.beat_alive())
    snap["beat_tick_age_seconds"] = None if tick is None else max(0.0, now.timestamp() - float(tick))
    snap["beat_period_seconds"] = s.beat_alive_seconds
    snap["workers_live"] = presence.live_count(s.presence_ttl_seconds, now.timestamp())
    snap["api_p95_ms"], snap["api_pool_full"] = _api_processes(now.timestamp())
    loops: dict[str, Any] = {}
    for name, period in loop_periods(s).items():
        stats = loop_stats(name)
        last = stats.get("last", {})
        loops[name] = {"last_run": last.get("at"), "period": period, "lease_late": last.get("lease_late", 0)}
    snap["loops"] = loops
    return snap


def publish(snap: Snapshot) -> None:
    s = get_settings()
    ttl = max(10, int(6 * s.health_period_seconds))  # gone when the loop stops: no stale gauges
    get_redis().set(redis_keys.ops_snapshot(), json.dumps(snap), ex=ttl)


def read() -> Snapshot | None:
    raw = get_redis().get(redis_keys.ops_snapshot())
    return None if raw is None else dict(json.loads(raw))


def age(snap: Snapshot) -> float:
    return max(0.0, time.time() - float(snap["at"]))
