"""The alert rules, each declared once: medic's own check of the health snapshot
(worker/control/snapshot.py, judged by the health_and_alerts loop) and the same alert for a
Prometheus server. deploy/prometheus/rules.yml is rendered from the declarations below:

    .venv/bin/python -m worker.control.alert_rules --write   # rewrite deploy/prometheus/rules.yml
    .venv/bin/python -m worker.control.alert_rules --check   # exit 1 if the file differs (make lint)

A rule only says "the condition holds now"; how long it must hold (`for`), when it is sent and
resolved is worker/control/alerts.py's business. What each alert means and what to do:
docs/operations.md.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from worker.control.snapshot import API_MIN_SAMPLES
from worker.ledger.db import pool_capacity
from worker.settings import Settings

if TYPE_CHECKING:
    from worker.control.snapshot import QueueGauges, Snapshot

WARNING = "warning"
CRITICAL = "critical"
RULES_FILE = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "rules.yml"


@dataclass(frozen=True)
class Finding:
    """One alert instance whose condition holds: labels identify it, the summary explains it."""

    labels: dict[str, str]
    summary: str
    value: float = 0.0


@dataclass(frozen=True)
class Threshold:
    """The setting a rule compares against. Prometheus has no settings: its expression gets the
    setting's default, times `scale` when PromQL counts in another unit (ms there, s here)."""

    setting: str
    scale: float = 1.0

    def setting_default(self) -> float:
        return float(Settings.model_fields[self.setting].get_default(call_default_factory=True))

    def default(self) -> float:
        """The threshold in the expression's unit."""
        return round(self.setting_default() * self.scale, 9)


@dataclass(frozen=True)
class Rule:
    """One alert: `check` judges the snapshot for medic's loop; `expr` and `summary` are the same
    alert in PromQL, where `$threshold` (and `$percent`, the same as a percentage) stand for the
    threshold setting's default."""

    name: str
    severity: str
    check: Callable[[Snapshot, Settings], list[Finding]]
    expr: str
    summary: str
    threshold: Threshold | None = None
    default_for: float | None = None  # None: MEDIC_ALERT_FOR_SECONDS
    note: str = ""  # why the expression is what it is: a comment above the rule in rules.yml

    def for_seconds(self, s: Settings) -> float:
        if self.name in s.alert_for_overrides:
            return s.alert_for_overrides[self.name]
        return s.alert_for_seconds if self.default_for is None else self.default_for

    def promql(self) -> str:
        """The expression as Prometheus evaluates it, the threshold at its default."""
        return self._at_default(self.expr)

    def prometheus_summary(self) -> str:
        return self._at_default(self.summary)

    def _at_default(self, text: str) -> str:
        if self.threshold is None:
            return text
        value = self.threshold.default()
        return text.replace("$threshold", _number(value)).replace("$percent", _number(100 * value))


def _queues(snap: Snapshot) -> dict[str, QueueGauges]:
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


STALL_WINDOW_S = 300  # a stall, even one healed at once, is reported this long (increase over 5m)


def consumer_stalled(snap: Snapshot, s: Settings) -> list[Finding]:
    """A worker's stall watchdog (worker/runtime/progress.py) marked a stall within the window."""
    now = float(snap["at"])
    return [
        Finding(
            {"worker": e["worker"], "queue": e["queue"]},
            f"worker {e['worker']} took no job from {e['queue']} for {float(e['at']) - float(e['since']):.0f} s "
            f"while jobs waited and it had free slots ({e['action']}, {max(0.0, now - float(e['at'])):.0f} s ago)",
            float(e["at"]) - float(e["since"]),
        )
        for e in snap.get("consumer_stalls", [])
        if now - float(e["at"]) <= STALL_WINDOW_S
    ]


def lease_late(snap: Snapshot, s: Settings) -> list[Finding]:
    recover = snap.get("loops", {}).get("recover_stuck")
    late = int(recover["lease_late"] or 0) if recover else 0
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


def schedule_missed(snap: Snapshot, s: Settings) -> list[Finding]:
    """A due fire not made within the slack of its time: fire_schedules is not running (beat or
    the control worker down, or the loop failing)."""
    return [
        Finding(
            {"tenant": late["tenant"], "schedule": late["schedule"]},
            f"schedule {late['schedule']} of {late['tenant']}: its fire is {late['late_seconds']:.0f} s late",
            float(late["late_seconds"]),
        )
        for late in snap.get("schedules_late", [])
        if late["late_seconds"] > s.schedule_missed_slack_seconds
    ]


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


USAGE = Threshold("alert_usage_ratio")
RULES: tuple[Rule, ...] = (
    Rule("MedicQueueShedding", WARNING, queue_shedding, default_for=0.0,
         expr="max by (queue) (medic_queue_shedding) == 1",
         summary="queue {{ $labels.queue }} is shedding: new jobs get 429 until it drains below its low watermark"),
    Rule("MedicQueueBacklogOld", WARNING, backlog_old, threshold=Threshold("alert_backlog_age_seconds"),
         expr="max by (queue) (medic_queue_oldest_queued_age_seconds) > $threshold",
         summary="the oldest queued job of {{ $labels.queue }} waits {{ $value | humanizeDuration }}"),
    Rule("MedicJobsLeaseLate", WARNING, lease_late,
         expr='max(medic_alerts_firing{alert="MedicJobsLeaseLate"}) > 0',
         summary="running jobs have expired leases while their worker is present (heartbeat thread stuck?)",
         note="Only medic can tell a late lease (worker present, lease expired): its own verdict."),
    Rule("MedicDeadJobsHigh", WARNING, dead_high, threshold=Threshold("alert_dead_per_minute"),
         expr='sum(increase(medic_jobs_finished_total{outcome="dead"}[1m])) > $threshold',
         summary="{{ $value }} jobs ended dead in the last minute"),
    Rule("MedicQueueUnconsumed", CRITICAL, queue_unconsumed,
         expr="max by (queue) (medic_queue_depth) > 0\n"
              "and on (queue) max by (queue) (medic_queue_consumers) == 0",
         summary="queue {{ $labels.queue }} holds {{ $value }} jobs and no live worker consumes it"),
    Rule("MedicConsumerStalled", WARNING, consumer_stalled, default_for=0.0,
         expr=f"max by (worker, queue) (increase(medic_consumer_stalls_total[{STALL_WINDOW_S // 60}m])) > 0",
         summary="worker {{ $labels.worker }} took no job from {{ $labels.queue }} while jobs waited and it had "
                 "free slots: its consumer was restarted",
         note="The worker's own watchdog decided (MEDIC_CONSUMER_STALL_SECONDS) and acted; a stall healed at once\n"
              f"is reported for {STALL_WINDOW_S // 60} minutes all the same."),
    Rule("MedicLoopStale", CRITICAL, loop_stale,
         expr='max by (loop) (medic_alerts_firing{alert="MedicLoopStale"}) > 0\n'
              "or (time() - max(medic_loop_last_run_timestamp_seconds)) > 600",
         summary="control loop {{ $labels.loop }} is not running (control worker or beat down?)",
         note="medic's own verdict per loop (3 periods), or no loop at all ran for 10 minutes\n"
              "(the control worker or beat is gone, so nobody reports the verdict)."),
    Rule("MedicScheduleMissed", WARNING, schedule_missed, default_for=0.0,
         threshold=Threshold("schedule_missed_slack_seconds"),
         expr="max by (tenant, schedule) (medic_schedule_late_seconds) > $threshold",
         summary="schedule {{ $labels.schedule }} of {{ $labels.tenant }}: a fire is "
                 "{{ $value | humanizeDuration }} late (fire_schedules not running?)",
         note="How late a schedule's next fire is, past its time; the slack is the rule's own `for`."),
    Rule("MedicDbPoolSaturated", WARNING, pool_saturated, threshold=USAGE,
         expr="max by (process) (medic_db_pool_checked_out / medic_db_pool_capacity) > $threshold\n"
              "or max by (process) (increase(medic_db_pool_waits_total[5m])) > 0\n"
              "or max by (process) (increase(medic_db_pool_timeouts_total[5m])) > 0",
         summary="process {{ $labels.process }}: its ledger connection pool is over $percent % checked out, "
                 "or checkouts waited or timed out in the last 5 minutes"),
    Rule("MedicPostgresConnectionsHigh", CRITICAL, postgres_connections, threshold=USAGE,
         expr="max(medic_postgres_connections) / max(medic_postgres_max_connections) > $threshold",
         summary="PostgreSQL has {{ $value | humanizePercentage }} of max_connections in use"),
    Rule("MedicRedisMemoryHigh", CRITICAL, redis_memory, threshold=USAGE,
         expr="max(medic_redis_used_memory_bytes) / max(medic_redis_maxmemory_bytes > 0) > $threshold",
         summary="Redis uses {{ $value | humanizePercentage }} of maxmemory (noeviction: writes fail when full)"),
    Rule("MedicRedisEvictionPolicy", CRITICAL, redis_eviction,
         expr="max(medic_redis_noeviction) == 0",
         summary="Redis maxmemory-policy is not noeviction: it may evict queued messages"),
    Rule("MedicApiSlow", WARNING, api_slow, threshold=Threshold("slow_request_ms", scale=0.001),
         expr="histogram_quantile(0.95, sum by (instance, le) (rate(medic_api_request_seconds_bucket[1m])))"
              " > $threshold\n"
              "and on (instance) sum by (instance) (increase(medic_api_request_seconds_count[1m]))"
              f" >= {API_MIN_SAMPLES}",
         summary="API {{ $labels.instance }} p95 latency is {{ $value | humanizeDuration }}",
         note=f"Per API process, over the last minute, with at least {API_MIN_SAMPLES} requests (as medic's rule)."),
)  # fmt: skip


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _duration(seconds: float) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size:.0f}{unit}"
    return f"{_number(seconds)}s"


def _header(defaults: Settings) -> list[str]:
    lines = [
        "# medic's alerts for a Prometheus server: the rules medic's own health_and_alerts loop evaluates.",
        "# Generated by `python -m worker.control.alert_rules --write` from worker/control/alert_rules.py:",
        "# do not edit by hand (`make lint` and tests/deploy/test_prometheus_files.py fail when it drifts).",
        "# Thresholds and `for` are the defaults of medic's settings (docs/configuration.md); a deployment",
        "# that sets them otherwise must change its copy of this file to match:",
        f"#   for: MEDIC_ALERT_FOR_SECONDS ({_number(defaults.alert_for_seconds)} s), "
        + ", ".join(f"{r.name} {_number(r.for_seconds(defaults))} s" for r in RULES if r.default_for is not None),
    ]
    for rule in RULES:
        if rule.threshold is not None:
            t = rule.threshold
            line = f"#   {rule.name}: MEDIC_{t.setting.upper()} = {_number(t.setting_default())}"
            lines.append(line + ("" if t.scale == 1 else f" ({_number(t.default())} in the expression)"))
    return [*lines, "# What each alert means and what to do: docs/operations.md and docs/deploy.md."]


def _rule_lines(rule: Rule, defaults: Settings) -> list[str]:
    lines = [f"      - alert: {rule.name}"]
    lines += [f"        # {line}" for line in rule.note.splitlines()]
    expr = rule.promql()
    if "\n" in expr:
        lines += ["        expr: |-", *(f"          {line}" for line in expr.splitlines())]
    else:
        lines.append(f"        expr: {expr}")
    if for_seconds := rule.for_seconds(defaults):
        lines.append(f"        for: {_duration(for_seconds)}")
    lines += ["        labels:", f"          severity: {rule.severity}", "        annotations:",
              f"          summary: {json.dumps(rule.prometheus_summary(), ensure_ascii=False)}"]  # fmt: skip
    return lines


def render() -> str:
    """The whole of deploy/prometheus/rules.yml, with every setting at its default."""
    defaults = Settings.model_construct()  # the declared defaults, whatever this process's environment says
    lines = [*_header(defaults), "groups:", "  - name: medic", "    rules:"]
    for i, rule in enumerate(RULES):
        lines += ([""] if i else []) + _rule_lines(rule, defaults)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, path: Path = RULES_FILE) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = render()
    if args == ["--check"]:
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            print(f"{path} differs from worker/control/alert_rules.py: run "
                  "`python -m worker.control.alert_rules --write`", file=sys.stderr)  # fmt: skip
            return 1
        return 0
    if args == ["--write"]:
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
