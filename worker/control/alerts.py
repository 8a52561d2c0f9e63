"""health_and_alerts: take the health snapshot, judge every rule, and send what changed.

Each alert instance (rule name + labels) goes pending when its condition first holds, fires once
it held for the rule's `for`, is re-sent at most every MEDIC_ALERT_REPEAT_SECONDS while it fires,
and is resolved (and sent once more) when the condition clears. Its state lives in one Redis hash
written by the run that holds the loop's lock (run_loop), and the state is written *before* the
notifications are handed to the sinks: two control workers never send one transition twice (a
crash between the write and the send loses that notification; the log of the next run and
GET /alerts still show the alert).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from typing import Any

from worker.broker import redis_keys
from worker.broker.redis_client import get_redis
from worker.control import alert_sinks, snapshot
from worker.control.alert_rules import RULES, Finding, Rule
from worker.runtime import pooltrouble, progress
from worker.settings import get_settings

log = logging.getLogger(__name__)

RULES_BY_NAME = {rule.name: rule for rule in RULES}
RESOLVED_KEEP = 100  # recently resolved alerts kept for GET /alerts
Alert = dict[str, Any]


def alert_key(name: str, labels: dict[str, str]) -> str:
    return name + json.dumps(labels, sort_keys=True)


def findings(snap: snapshot.Snapshot) -> dict[str, tuple[Rule, Finding]]:
    """Every alert instance whose condition holds now; a rule that fails is logged and skipped."""
    s = get_settings()
    out: dict[str, tuple[Rule, Finding]] = {}
    for rule in RULES:
        try:
            for f in rule.check(snap, s):
                out[alert_key(rule.name, f.labels)] = (rule, f)
        except Exception:
            log.exception("alert rule %s failed", rule.name)
    return out


def _step(prev: Alert | None, rule: Rule, f: Finding, now: float) -> tuple[Alert, str | None]:
    """The next state of one alert whose condition holds, and the notification it calls for."""
    s = get_settings()
    alert: Alert = prev or {"name": rule.name, "labels": f.labels, "since": now, "firing": False}
    alert.update(severity=rule.severity, summary=f.summary, value=f.value)
    alert.pop("clear_since", None)  # it holds again: a resolve must wait for a new clear spell
    if not alert["firing"]:
        if now - alert["since"] >= rule.for_seconds(s):
            alert.update(firing=True, fired_at=now, last_sent=now)
            return alert, "firing"
        return alert, None
    if now - alert.get("last_sent", 0) >= s.alert_repeat_seconds:
        alert["last_sent"] = now
        return alert, "firing"
    return alert, None


def _clear_long_enough(alert: Alert, now: float) -> bool:
    """A firing alert resolves once its condition stayed clear for the rule's `for` (a pending
    one is simply dropped): one noisy sample must not send a resolve and a new firing."""
    rule = RULES_BY_NAME.get(alert["name"])
    alert.setdefault("clear_since", now)
    return rule is None or now - float(alert["clear_since"]) >= rule.for_seconds(get_settings())


def evaluate(snap: snapshot.Snapshot, now: float) -> dict[str, int]:
    """One evaluation: update the state in Redis, then notify the sinks of what changed."""
    r = get_redis()
    state = {k: json.loads(v) for k, v in r.hgetall(redis_keys.alert_state()).items()}
    holding = findings(snap)
    writes: dict[str, str] = {}
    sends: list[tuple[Alert, str]] = []
    for key, (rule, f) in holding.items():
        alert, send = _step(state.get(key), rule, f, now)
        writes[key] = json.dumps(alert)
        if send:
            sends.append((alert, send))
    cleared = [k for k in state if k not in holding]
    pipe = r.pipeline(transaction=True)
    for key in cleared:
        alert = state[key]
        if alert["firing"] and not _clear_long_enough(alert, now):
            writes[key] = json.dumps(alert)  # still firing until clear for its `for`: no flapping
            continue
        pipe.hdel(redis_keys.alert_state(), key)
        if alert["firing"]:
            resolved = {**alert, "firing": False, "resolved_at": now}
            pipe.lpush(redis_keys.alerts_resolved(), json.dumps(resolved))
            sends.append((resolved, "resolved"))
    pipe.ltrim(redis_keys.alerts_resolved(), 0, RESOLVED_KEEP - 1)
    if writes:
        pipe.hset(redis_keys.alert_state(), mapping=writes)  # type: ignore[arg-type]
    pipe.execute()
    for alert, status in sends:  # after the write: a second worker sees it as already sent
        alert_sinks.notify(alert, status)
    firing = sum(1 for v in writes.values() if json.loads(v)["firing"])
    return {"firing": firing, "pending": len(writes) - firing, "sent": len(sends)}


def firing_gauge(snap: snapshot.Snapshot) -> dict[str, int]:
    """medic_alerts_firing: how many instances of each alert fire, by name|severity."""
    counts: dict[str, int] = {f"{rule.name}|{rule.severity}": 0 for rule in RULES}
    for alert in active():
        if alert["firing"]:
            counts[f"{alert['name']}|{alert['severity']}"] = counts.get(f"{alert['name']}|{alert['severity']}", 0) + 1
    return counts


def health_and_alerts(now: dt.datetime, loop_periods: Mapping[str, float]) -> dict[str, int]:
    """The loop: measure once, judge, send; publish the snapshot for every API's /metrics.
    `loop_periods` names the loops whose age is judged: the loop as registered
    (worker/control/registry.py `health_and_alerts`) hands in the registry's."""
    snap = snapshot.take(now, loop_periods)
    snap["pool_trouble"] = pooltrouble.read(now.timestamp())  # every process's pool waits and timeouts
    snap["consumer_stalls"] = progress.read(now.timestamp())  # stalls the workers' watchdogs marked
    counts = evaluate(snap, now.timestamp())
    snap["alerts_firing"] = firing_gauge(snap)
    snapshot.publish(snap)
    return counts


def active() -> list[Alert]:
    """Alerts pending or firing now."""
    raw = get_redis().hgetall(redis_keys.alert_state())
    return sorted((json.loads(v) for v in raw.values()), key=lambda a: (a["name"], json.dumps(a["labels"])))


def recently_resolved(limit: int = RESOLVED_KEEP) -> list[Alert]:
    return [json.loads(v) for v in get_redis().lrange(redis_keys.alerts_resolved(), 0, limit - 1)]
