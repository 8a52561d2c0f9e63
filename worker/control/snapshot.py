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
from collections.abc import Mapping
from typing import Any, NotRequired, TypedDict, cast

from worker.accept import admission
from worker.broker import presence, redis_keys
from worker.broker.counters import known_queues
from worker.broker.presence import live_consumers
from worker.broker.redis_client import get_redis
from worker.clock import seconds
from worker.control.loop import loop_stats
from worker.ledger import db, queries, schedules
from worker.settings import get_settings


class QueueGauges(TypedDict):
    """One queue, as medic_queue_* serves it (api/metrics.py QUEUE_GAUGES)."""

    depth: int
    queued: int
    high_watermark: int
    low_watermark: int
    shedding: int
    arrival_rate: float
    drain_rate: float
    desired_slots: int | None
    oldest_queued_age_seconds: float | None
    consumers: int


class PostgresGauges(TypedDict, total=False):
    """The server's view of connections; empty when the ledger is not PostgreSQL."""

    busy_by_process: dict[str, int]
    connections: int
    max_connections: int


class RedisGauges(TypedDict):
    used_memory_bytes: int
    maxmemory_bytes: int
    maxmemory_policy: str


class LateSchedule(TypedDict):
    """A schedule whose next fire is past its time (not made yet); MedicScheduleMissed judges the slack."""

    tenant: str
    schedule: str
    late_seconds: float


LATE_SCHEDULES_SHOWN = 20  # the latest; more say nothing new (the loop is not running)


def _late_schedules(now: dt.datetime) -> list[LateSchedule]:
    with db.connect() as conn:
        found = schedules.late(conn, now, limit=LATE_SCHEDULES_SHOWN)
    return [
        {"tenant": sc.tenant, "schedule": sc.name, "late_seconds": (now - sc.next_fire_at).total_seconds()}
        for sc in found
        if sc.next_fire_at is not None
    ]


class LoopAge(TypedDict):
    """A watched loop's last run (None: never seen) and period, for the staleness rule."""

    last_run: float | None
    period: float
    lease_late: int


class Snapshot(TypedDict):
    """The health snapshot: taken by `take`, completed and published by the health loop
    (worker/control/alerts.py), judged by worker/control/alert_rules.py, served by api/metrics.py."""

    at: float
    redis: RedisGauges
    watching_since: float
    ledger_up: int
    ledger_error: NotRequired[str]  # only while the ledger is down
    dead_last_minute: NotRequired[int]  # only while the ledger is up
    postgres: NotRequired[PostgresGauges]  # only while the ledger is up
    queues: dict[str, QueueGauges]
    beat_tick_age_seconds: float | None
    beat_period_seconds: float
    workers_live: int
    api_p95_ms: dict[str, float]
    api_pool_full: dict[str, float]
    loops: dict[str, LoopAge]
    pool_trouble: NotRequired[dict[str, dict[str, Any]]]  # worker/runtime/pooltrouble.py read()
    consumer_stalls: NotRequired[list[dict[str, Any]]]  # worker/runtime/progress.py read()
    schedules_late: NotRequired[list[LateSchedule]]  # only while the ledger is up
    alerts_firing: NotRequired[dict[str, int]]  # "name|severity" -> instances firing


def _queue(queue: str, queued: int, oldest: dt.datetime | None, now: dt.datetime) -> QueueGauges:
    r = get_redis()
    wm = admission.watermarks(queue)
    gate = r.hgetall(redis_keys.admission(queue))
    rates = r.hgetall(redis_keys.rates(queue))
    scale = r.hgetall(redis_keys.scale(queue))
    return {
        "depth": admission.depth(queue),
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


def _ledger(now: dt.datetime) -> tuple[dict[str, int], dict[str, dt.datetime], int, PostgresGauges]:
    with db.connect() as conn:
        # The server's view first: a ledger slowed by locks would hold the jobs reads below, and
        # the pools would look idle by the time they answer.
        pg = cast(PostgresGauges, queries.server_connections(conn) or {})
        queued = {q: n for state, q, n in queries.live_counts_by_queue(conn) if state == "queued"}
        oldest = queries.oldest_queued_by_queue(conn)
        dead = queries.dead_since(conn, now - seconds(60))
    return queued, oldest, dead, pg


def _redis() -> RedisGauges:
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


def _loop_ages(loop_periods: Mapping[str, float]) -> dict[str, LoopAge]:
    ages: dict[str, LoopAge] = {}
    for name, period in loop_periods.items():
        last = loop_stats(name).get("last", {})
        ages[name] = {"last_run": last.get("at"), "period": period, "lease_late": int(last.get("lease_late", 0))}
    return ages


def _beat_tick_age(now: float) -> float | None:
    tick = get_redis().get(redis_keys.beat_alive())
    return None if tick is None else max(0.0, now - float(tick))


def _watching_since(now: float) -> float:
    """When the health loop first ran on this Redis: a loop never seen is late from then on."""
    get_redis().set(redis_keys.ops_watch_since(), now, nx=True)
    return float(get_redis().get(redis_keys.ops_watch_since()) or now)


def take(now: dt.datetime, loop_periods: Mapping[str, float]) -> Snapshot:
    """Measure everything once, with the age of each loop of `loop_periods` (name -> period).
    A ledger outage leaves its part out, never the rest."""
    s = get_settings()
    at = now.timestamp()
    redis_gauges = _redis()
    watching_since = _watching_since(at)
    error: str | None = None
    try:
        queued, oldest, dead, pg = _ledger(now)
        late = _late_schedules(now)
    except Exception as exc:  # noqa: BLE001 - reported as ledger_up 0; the Redis gauges still count
        queued, oldest, dead, pg, late, error = {}, {}, 0, {}, [], str(exc)[:300]
    names = set(known_queues()) | set(queued)
    api_p95_ms, api_pool_full = _api_processes(at)
    snap: Snapshot = {
        "at": at,
        "redis": redis_gauges,
        "watching_since": watching_since,
        "ledger_up": int(error is None),
        "queues": {q: _queue(q, queued.get(q, 0), oldest.get(q), now) for q in sorted(names)},
        "beat_tick_age_seconds": _beat_tick_age(at),
        "beat_period_seconds": s.beat_alive_seconds,
        "workers_live": presence.live_count(s.presence_ttl_seconds, at),
        "api_p95_ms": api_p95_ms,
        "api_pool_full": api_pool_full,
        "loops": _loop_ages(loop_periods),
    }
    if error is None:
        snap["dead_last_minute"], snap["postgres"], snap["schedules_late"] = dead, pg, late
    else:
        snap["ledger_error"] = error
    return snap


HISTORY_SECONDS = 3600.0
HISTORY_MAX = 720  # at most one sample every 5 s over the hour, whatever the loop's period


def publish(snap: Snapshot) -> None:
    """The latest snapshot (for the API and the gauges), and a compact sample of it on an
    hour-long list (for the console's chart of queue depth and workers)."""
    s = get_settings()
    ttl = max(10, int(6 * s.health_period_seconds))  # gone when the loop stops: no stale gauges
    sample = {
        "at": round(snap["at"], 1),
        "workers": snap["workers_live"],
        "queued": {q: g["queued"] for q, g in snap["queues"].items()},
    }
    keep = max(2, min(HISTORY_MAX, int(HISTORY_SECONDS / max(s.health_period_seconds, 0.1))))
    with get_redis().pipeline(transaction=False) as pipe:
        pipe.set(redis_keys.ops_snapshot(), json.dumps(snap), ex=ttl)
        pipe.lpush(redis_keys.ops_history(), json.dumps(sample, separators=(",", ":")))
        pipe.ltrim(redis_keys.ops_history(), 0, keep - 1)
        pipe.expire(redis_keys.ops_history(), int(HISTORY_SECONDS))
        pipe.execute()


def history(since: float) -> list[dict[str, Any]]:
    """The samples taken since `since` (epoch seconds), oldest first."""
    raw = get_redis().lrange(redis_keys.ops_history(), 0, HISTORY_MAX - 1)
    samples = [json.loads(r) for r in raw]
    return [x for x in reversed(samples) if x["at"] >= since]


def read() -> Snapshot | None:
    raw = get_redis().get(redis_keys.ops_snapshot())
    return None if raw is None else cast(Snapshot, json.loads(raw))


def age(snap: Snapshot) -> float:
    return max(0.0, time.time() - float(snap["at"]))
