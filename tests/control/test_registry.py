"""Every loop of the registry reaches every consumer: the beat schedule (its period from its
setting), a Celery task that runs it under its lock and counts it in the loop metrics, the
staleness rule, and the docs. Adding a loop to `LOOPS` and forgetting nothing else passes here;
a consumer that keeps its own list fails here."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from tests import ROOT
from tests.control.fabricate import empty_ledger
from worker.broker.celery_app import CONTROL_QUEUE, app
from worker.clock import seconds, utcnow
from worker.control import alert_rules, snapshot, tasks, wiring
from worker.control.loop import LoopFn
from worker.control.metrics import loop_metrics
from worker.control.registry import LOOPS, Loop, loop_periods
from worker.control.schedule import beat_schedule
from worker.settings import Settings, get_settings

NAMES = [loop.name for loop in LOOPS]


def _value(metric: MetricWrapperBase, name: str, **labels: str) -> float:
    """One sample of a loop metric, 0 when its series does not exist yet."""
    samples = [s for family in metric.collect() for s in family.samples if s.name == name and s.labels == labels]
    return samples[0].value if samples else 0.0


def test_every_loop_is_scheduled_with_the_period_of_its_own_setting() -> None:
    # a distinct period per loop: a schedule that took another loop's setting would show
    s = Settings(**{loop.period_setting: 100.0 + i for i, loop in enumerate(LOOPS)})
    schedule = beat_schedule(s)
    for i, loop in enumerate(LOOPS):
        entry = schedule[loop.schedule_key]
        assert entry["task"] == loop.task_name
        assert entry["schedule"] == 100.0 + i
        assert entry["options"] == {"queue": CONTROL_QUEUE, "expires": loop.expires(s)}
    assert set(schedule) == {loop.schedule_key for loop in LOOPS} | {"beat-alive"}


@pytest.mark.parametrize("name", NAMES)
def test_every_loop_has_a_task_that_runs_it_under_its_lock_and_counts_it(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    [loop] = [loop for loop in LOOPS if loop.name == name]
    assert app.tasks[loop.task_name] is tasks.TASKS[name]
    calls: list[tuple[str, LoopFn, float]] = []
    counts = {count: 2 for count in loop.recoveries}

    def fake_run_loop(loop_name: str, fn: LoopFn, *, lock_ttl_s: float) -> dict[str, Any]:
        calls.append((loop_name, fn, lock_ttl_s))
        return {"at": 1234.0, "seconds": 0.01, **counts}

    monkeypatch.setattr(wiring, "run_loop", fake_run_loop)
    m = loop_metrics()
    outcomes = set(loop.recoveries.values())
    runs = _value(m.runs, "medic_loop_runs_total", loop=name)
    recovered = {o: _value(m.recoveries, "medic_recoveries_total", loop=name, outcome=o) for o in outcomes}
    tasks.TASKS[name].run()
    assert calls == [(name, loop.run, loop.lock_ttl(get_settings()))]
    assert _value(m.runs, "medic_loop_runs_total", loop=name) == runs + 1
    assert _value(m.last_run, "medic_loop_last_run_timestamp_seconds", loop=name) == 1234.0
    for outcome in outcomes:
        given = 2 * sum(1 for o in loop.recoveries.values() if o == outcome)
        now_recovered = _value(m.recoveries, "medic_recoveries_total", loop=name, outcome=outcome)
        assert now_recovered == recovered[outcome] + given


def test_the_health_loop_judges_the_age_of_every_watched_loop(private_ledger: dict[str, str]) -> None:
    """The registered health loop hands the watched loops to the snapshot, and the MedicLoopStale
    rule names each one once it is 3 periods late (none ran in this module's own Redis)."""
    watched = {loop.name: loop.period(get_settings()) for loop in LOOPS if loop.watched}
    assert watched == loop_periods(get_settings()) and "recover_stuck" in watched
    now = utcnow()
    [health] = [loop for loop in LOOPS if loop.name == "health_and_alerts"]
    health.run(now)
    snap = snapshot.read()
    assert snap is not None
    assert {name: age["period"] for name, age in snap["loops"].items()} == watched
    later = now + seconds(3 * max(watched.values()) + 1)
    late = snapshot.take(later, loop_periods(get_settings()))
    stale = {f.labels["loop"] for f in alert_rules.loop_stale(late, get_settings())}
    assert stale >= set(watched)


def test_the_counts_named_as_recoveries_are_counts_the_loop_reports(private_ledger: dict[str, str]) -> None:
    """A loop whose result renamed a count would silently stop feeding medic_recoveries_total."""
    empty_ledger()
    for loop in LOOPS:
        if loop.recoveries:
            assert set(loop.recoveries) <= set(loop.run(utcnow() + dt.timedelta(hours=1))), loop.name


def test_a_loop_naming_no_setting_is_refused_at_import() -> None:
    with pytest.raises(ValueError, match="no setting"):
        Loop("typo", LOOPS[0].run, "recover_period_second")


def test_the_docs_name_every_loop_with_its_periods_and_recoveries() -> None:
    """docs/architecture.md's table of loops (period: default / fast profile) and the
    medic_recoveries_total row of docs/operations.md."""
    table = (ROOT / "docs/architecture.md").read_text()
    default, fast = Settings(profile="production"), Settings(profile="fast")
    for loop in LOOPS:
        periods = f"{loop.period(default):g} s / {loop.period(fast):g} s"
        assert re.search(rf"^\| `{loop.name}` \| [^|]+ \| {re.escape(periods)} \|", table, flags=re.M), loop.name
    ops = (ROOT / "docs/operations.md").read_text()
    [row] = [line for line in ops.splitlines() if line.startswith("| `medic_recoveries_total`")]
    for loop in LOOPS:
        assert (f"`{loop.name}`" in row) == bool(loop.recoveries), loop.name
        assert all(f"`{outcome}`" in row for outcome in loop.recoveries.values()), loop.name
