"""Every control loop, declared once: its name, its function of `now`, the setting of its period,
the counts its metrics report as recoveries, and whether the staleness rule watches it.

The Celery tasks (worker/control/tasks.py), the beat schedule (worker/control/schedule.py), the
loop metrics (worker/control/metrics.py) and the loop ages the MedicLoopStale rule judges (the
health snapshot) all read `LOOPS`. Adding a loop is one `Loop(...)` here plus its test; the period
setting it names must exist (refused at import otherwise), and tests/control/test_registry.py
fails until every consumer covers it and the docs list it with its periods.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from worker.broker.celery_app import CONTROL_TASK_PREFIX
from worker.control import alerts
from worker.control.autoscale import autoscale
from worker.control.backpressure import apply_backpressure
from worker.control.dispatch_held import dispatch_held
from worker.control.fire import fire_schedules
from worker.control.loop import LoopFn
from worker.control.prune import prune
from worker.control.reconcile import reconcile_broker
from worker.control.recover import recover_stuck
from worker.control.repair_workflows import repair_workflows
from worker.control.timeouts import enforce_timeouts
from worker.settings import Settings, get_settings

MIN_LOCK_TTL_S = 10.0


@dataclass(frozen=True)
class Loop:
    """One control loop. `recoveries` maps a count of the loop's result to the `outcome` label it
    adds to medic_recoveries_total; `watched` puts the loop under the MedicLoopStale rule."""

    name: str
    run: LoopFn
    period_setting: str
    recoveries: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    watched: bool = True

    def __post_init__(self) -> None:
        if self.period_setting not in Settings.model_fields:
            raise ValueError(f"loop {self.name}: no setting {self.period_setting}")

    @property
    def task_name(self) -> str:
        return CONTROL_TASK_PREFIX + self.name

    @property
    def schedule_key(self) -> str:
        """The beat schedule's entry; beat's schedule file remembers each entry's last run by it."""
        return self.name.replace("_", "-")

    def period(self, s: Settings) -> float:
        return float(getattr(s, self.period_setting))

    def lock_ttl(self, s: Settings) -> float:
        """A crashed run's lock outlives it by a few periods at most, then the next run takes over."""
        return max(MIN_LOCK_TTL_S, 3 * self.period(s))

    def expires(self, s: Settings) -> float:
        """A run that missed its slot is dropped instead of piling up behind the next one."""
        return max(1.0, 0.9 * self.period(s))


def health_and_alerts(now: dt.datetime) -> dict[str, int]:
    """The health loop as the control plane runs it: it judges the other loops' ages, so it is
    handed the roster it belongs to (worker/control/alerts.py cannot import this module)."""
    return alerts.health_and_alerts(now, loop_periods(get_settings()))


# `stopped`: a job whose cancel was requested, ended `cancelled` instead of given back
REQUEUED_OR_DEAD = MappingProxyType({"requeued": "requeued", "dead": "dead", "stopped": "stopped"})

LOOPS: tuple[Loop, ...] = (
    Loop("recover_stuck", recover_stuck, "recover_period_seconds", REQUEUED_OR_DEAD),
    Loop("enforce_timeouts", enforce_timeouts, "timeout_period_seconds", REQUEUED_OR_DEAD),
    Loop(
        "reconcile_broker",
        reconcile_broker,
        "reconcile_period_seconds",
        MappingProxyType({"after_restart": "republished", "unpublished": "republished", "lost": "republished"}),
    ),
    Loop(
        "repair_workflows",
        repair_workflows,
        "workflow_repair_period_seconds",
        MappingProxyType({"released": "released", "cancelled": "cancelled"}),
    ),
    # no recoveries: what it dispatches is routine (a back-off or a token came due, a resume)
    Loop("dispatch_held", dispatch_held, "dispatch_period_seconds"),
    Loop("apply_backpressure", apply_backpressure, "backpressure_period_seconds"),
    Loop("autoscale", autoscale, "autoscale_period_seconds"),
    Loop("fire_schedules", fire_schedules, "schedule_period_seconds"),
    # Hourly: 3 periods are hours, and a stopped control plane shows in the watched loops long before.
    Loop("prune", prune, "prune_period_seconds", watched=False),
    # Whenever it judges, it runs: its own age says nothing. Beat's tick (MedicLoopStale, loop
    # "beat") and the control worker's watchdog (worker/control/tasks.py) cover it.
    Loop("health_and_alerts", health_and_alerts, "health_period_seconds", watched=False),
)


def loop_periods(s: Settings) -> dict[str, float]:
    """The loops the staleness rule watches, with their periods: one not run for 3 is stale."""
    return {loop.name: loop.period(s) for loop in LOOPS if loop.watched}
