"""The alert rules: each one judges the health snapshot (worker/control/snapshot.py) and names
what is wrong, with labels saying what it is about (the queue, the loop). Names, severities and
thresholds match deploy/prometheus/rules.yml and docs/operations.md.

A rule only says "the condition holds now"; how long it must hold (`for`), when it is sent and
resolved is worker/control/alerts.py's business.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from worker.ledger.db import pool_capacity
from worker.settings import Settings

WARNING = "warning"
CRITICAL = "critical"
Snapshot = dict[str, Any]


@dataclass(frozen=True)
class Finding:
    """One alert instance whose condition holds: labels identify it, the summary explains it."""

    labels: dict[str, str]
    summary: str
    value: float = 0.0


@dataclass(frozen=True)
class Rule:
    name: str
    severity: str
    check: Callable[[Snapshot, Settings], list[Finding]]
    default_for: float | None = None  # None: MEDIC_ALERT_FOR_SECONDS
    description: str = field(default="")

    def for_seconds(self, s: Settings) -> float:
        if self.name in s.alert_for_overrides:
            return s.alert_for_overrides[self.name]
        return s.alert_for_seconds if self.default_for is None else self.default_for


def _queues(snap: Snapshot) -> dict[str, dict[str, Any]]:
    return dict(snap.get("queues", {}))


def queue_shedding(snap: Snapshot, s: Settings) -> list[Finding]:
    return [
        Finding(
            {"queue": q},
            f"queue {q} is shedding: depth {v['depth']} (high watermark {v['high_watermark']})",
            float(v["depth"]),
        )
        for q, v in _queues(snap).items()
        if v["shedding"] or v["depth"] >= v["high_watermark"]
    ]


def backlog_old(snap: Snapshot, s: Settings) -> list[Finding]:
    out = []
    for q, v in _queues(snap).items():
        age = v.get("oldest_queued_age_seconds")
        if age is not None and age > s.alert_backlog_age_seconds:
            out.append(Finding({"queue": q}, f"oldest queued job of {q} waits {age:.0f} s", age))
    return out


def queue_unconsumed(snap: Snapshot, s: Settings) -> list[Finding]:
    return [
        Finding(
            {"queue": q},
            f"queue {q} holds {max(v['depth'], v['queued'])} jobs and no live worker consumes it",
            float(max(v["depth"], v["queued"])),
        )
        for q, v in _queues(snap).items()
        if (v["depth"] > 0 or v["queued"] > 0) and v["consumers"] == 0
    ]


def lease_late(snap: Snapshot, s: Settings) -> list[Finding]:
    late = int(snap.get("loops", {}).get("recover_stuck", {}).get("lease_late") or 0)
    return [Finding({}, f"{late} running jobs have expired leases while their worker is present", late)] if late else []


def dead_high(snap: Snapshot, s: Settings) -> list[Finding]:
    dead = int(snap.get("dead_last_minute") or 0)
    if dead > s.alert_dead_per_minute:
        return [Finding({}, f"{dead} jobs ended dead in the last minute (threshold {s.alert_dead_per_minute})", dead)]
    return []


def loop_stale(snap: Snapshot, s: Settings) -> list[Finding]:
    """A loop (or beat's tick) not run for 3 periods; one never seen counts from when the health
    loop started watching, so a fresh start is not an outage."""
    now = float(snap["at"])
    watched = now - float(snap.get("watching_since", now))
    out = []
    for name, v in snap.get("loops", {}).items():
        age = watched if v["last_run"] is None else now - float(v["last_run"])
        if age > 3 * float(v["period"]):
            seen = "never ran" if v["last_run"] is None else f"last ran {age:.0f} s ago"
            out.append(Finding({"loop": name}, f"control loop {name} {seen} (period {v['period']:g} s)", age))
    tick = snap.get("beat_tick_age_seconds")
    age = watched if tick is None else float(tick)
    if age > 3 * float(snap["beat_period_seconds"]):
        out.append(Finding({"loop": "beat"}, "beat (or the control worker) has not ticked for 3 periods", age))
    return out


def postgres_connections(snap: Snapshot, s: Settings) -> list[Finding]:
    pg = snap.get("postgres") or {}
    used, limit = pg.get("connections", 0), pg.get("max_connections", 0)
    if limit and used > s.alert_usage_ratio * limit:
        return [Finding({}, f"PostgreSQL has {used} of {limit} connections in use", used / limit)]
    return []


def pool_saturated(snap: Snapshot, s: Settings) -> list[Finding]:
    capacity = pool_capacity(s.db_pool_size)  # as every process's pool is configured
    busy = (snap.get("postgres") or {}).get("busy_by_process", {})
    out = [
        Finding({"process": app}, f"{app} holds {n} of its {capacity} ledger connections", n / capacity)
        for app, n in busy.items()
        if n > s.alert_usage_ratio * capacity
    ]
    # An API process's own samples: its pool used up for most of the last 5 s (requests wait)
    out += [
        Finding({"process": process}, f"{process}: its ledger pool was used up {full:.0%} of the last 5 s", full)
        for process, full in snap.get("api_pool_full", {}).items()
        if full > s.alert_usage_ratio
    ]
    # Any process whose checkouts waited or timed out lately (worker/runtime/pooltrouble.py). The
    # window is the rule's `for` plus 2 health periods: one wait holds the condition over `for`,
    # so a lone timeout fires too (as Prometheus' `increase(...[window]) > 0` would), and it
    # resolves once the process has gone a window, then `for`, without one.
    now = float(snap["at"])
    window = _for_of("MedicDbPoolSaturated", s) + 2 * s.health_period_seconds
    for process, t in snap.get("pool_trouble", {}).items():
        ago = now - float(t["last_at"])
        if ago <= window:
            summary = (f"{process}: its ledger pool made {t['waits']} checkouts wait, {t['timeouts']} "
                       f"timed out (the last {max(0.0, ago):.0f} s ago)")  # fmt: skip
            out.append(Finding({"process": process}, summary, float(t["waits"] + t["timeouts"])))
    return out


def _for_of(name: str, s: Settings) -> float:
    return next(rule for rule in RULES if rule.name == name).for_seconds(s)


def api_slow(snap: Snapshot, s: Settings) -> list[Finding]:
    return [
        Finding(
            {"process": process},
            f"API {process}: p95 {p95:.0f} ms over the last minute (> {s.slow_request_ms:g} ms)",
            p95,
        )
        for process, p95 in snap.get("api_p95_ms", {}).items()
        if p95 > s.slow_request_ms
    ]


def redis_memory(snap: Snapshot, s: Settings) -> list[Finding]:
    r = snap.get("redis") or {}
    used, limit = r.get("used_memory_bytes", 0), r.get("maxmemory_bytes", 0)
    if limit and used > s.alert_usage_ratio * limit:
        return [Finding({}, f"Redis uses {used} of {limit} bytes", used / limit)]
    return []


def redis_eviction(snap: Snapshot, s: Settings) -> list[Finding]:
    policy = (snap.get("redis") or {}).get("maxmemory_policy", "noeviction")
    if policy and policy != "noeviction":
        return [Finding({"policy": policy}, f"Redis maxmemory-policy is {policy}: it may evict queued messages")]
    return []


RULES: tuple[Rule, ...] = (
    Rule("MedicQueueShedding", WARNING, queue_shedding, default_for=0.0),
    Rule("MedicQueueBacklogOld", WARNING, backlog_old),
    Rule("MedicJobsLeaseLate", WARNING, lease_late),
    Rule("MedicDeadJobsHigh", WARNING, dead_high),
    Rule("MedicQueueUnconsumed", CRITICAL, queue_unconsumed),
    Rule("MedicLoopStale", CRITICAL, loop_stale),
    Rule("MedicDbPoolSaturated", WARNING, pool_saturated),
    Rule("MedicPostgresConnectionsHigh", CRITICAL, postgres_connections),
    Rule("MedicRedisMemoryHigh", CRITICAL, redis_memory),
    Rule("MedicRedisEvictionPolicy", CRITICAL, redis_eviction),
    Rule("MedicApiSlow", WARNING, api_slow),
)
