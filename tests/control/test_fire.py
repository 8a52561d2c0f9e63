"""fire_schedules as a plain function of `now` (a fixed clock), on this module's own ledger: once
per scheduled time however many runs race, overlap, catch-up, pause, trigger, code declarations."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from tests.control.fabricate import empty_ledger
from worker.accept.fire_times import Timing
from worker.accept.schedules import ScheduleSpec, new_values
from worker.broker import inspect
from worker.control import declared
from worker.control.fire import fire_schedules, trigger
from worker.ledger import db, transitions
from worker.ledger import schedules as ledger
from worker.ledger.models import jobs, schedule_events, schedules
from worker.ledger.records import Job
from worker.ledger.schedules import Schedule
from worker.ledger.states import JobState
from worker.settings import get_settings

pytestmark = pytest.mark.usefixtures("private_ledger")

T0 = dt.datetime(2026, 6, 1, 12, 0, 0, tzinfo=dt.UTC)


def clear() -> None:
    empty_ledger()
    with db.begin() as conn:
        conn.execute(sa.delete(schedules))
        conn.execute(sa.delete(schedule_events))


@pytest.fixture(autouse=True)
def _empty() -> None:
    clear()


def at(s: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=s)


def make(every: float = 2, *, created: dt.datetime = T0, tenant: str = "fire", **kw: Any) -> Schedule:
    queue = kw.pop("queue", f"q-{uuid.uuid4().hex[:6]}")
    spec = ScheduleSpec(
        name=kw.pop("name", uuid.uuid4().hex[:8]),
        type="examples.echo",
        timing=Timing(every_seconds=every),
        args={"message": "tick"},
        queue=queue,
        **kw,
    )
    with db.begin() as conn:
        made = ledger.create(
            conn, new_values(spec, tenant=tenant, origin="api", now=created), actor="test", now=created
        )
    assert made is not None
    return made


def fires(schedule: Schedule) -> list[dt.datetime]:
    with db.connect() as conn:
        rows = conn.execute(
            sa.select(jobs.c.scheduled_for).where(jobs.c.schedule_id == schedule.id).order_by(jobs.c.scheduled_for)
        )
        return [r[0] for r in rows]


def tenant_jobs(tenant: str) -> list[Job]:
    with db.connect() as conn:
        return [Job.of(r) for r in conn.execute(sa.select(jobs).where(jobs.c.tenant == tenant))]


def reread(schedule: Schedule) -> Schedule:
    with db.connect() as conn:
        found = ledger.get(conn, schedule.id)
    assert found is not None
    return found


def actions(schedule: Schedule) -> list[str]:
    with db.connect() as conn:
        return [r.action for r in reversed(ledger.events(conn, schedule.id))]


def test_each_due_time_is_one_published_job_however_often_the_loop_runs() -> None:
    s = make(2, overlap="allow")
    assert fire_schedules(at(1)) == {"fired": 0, "skipped": 0, "raced": 0}, "not due before its first time"
    assert fire_schedules(at(4))["fired"] == 2
    assert fire_schedules(at(4))["fired"] == 0, "a second run at the same instant makes nothing"
    assert fires(s) == [at(2), at(4)]
    after = reread(s)
    assert after.next_fire_at == at(6) and after.fired == 2 and after.last_fire_at == at(4)
    [job] = [j for j in tenant_jobs("fire") if j.scheduled_for == at(4)]
    assert job.schedule_id == s.id and job.state == JobState.QUEUED
    assert inspect.depth(job.queue) == 2, "both fires were published"
    assert actions(s) == ["created", "fired", "fired"]


def test_racing_runs_fire_and_count_each_time_once() -> None:
    """Eight threads run the loop at the same `now` together: the compare-and-set on next_fire_at
    lets one of them act; the others find it moved (raced), so the times skipped as older than
    the catch-up window are counted once too."""
    s = make(1, overlap="allow", catch_up_seconds=5)
    barrier = threading.Barrier(8)
    results: list[dict[str, int]] = []

    def run() -> None:
        barrier.wait()
        results.append(fire_schedules(at(20)))

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fires(s) == [at(i) for i in range(15, 21)]
    assert reread(s).skipped == 14 and reread(s).fired == 6
    assert sum(r["fired"] for r in results) == 6 and sum(r["raced"] for r in results) == 7


def test_the_unique_fire_stops_a_second_insert_of_the_same_time() -> None:
    """Even when a run got past the compare-and-set with a stale view (here: next_fire_at put back
    by hand), the (schedule_id, scheduled_for) constraint makes the time fire once."""
    s = make(2, overlap="allow")
    fire_schedules(at(2))
    with db.begin() as conn:
        conn.execute(sa.update(schedules).where(schedules.c.id == s.id).values(next_fire_at=at(2)))
    assert fire_schedules(at(2))["fired"] == 0
    assert fires(s) == [at(2)]


def test_overlap_skip_waits_for_the_previous_job_to_finish() -> None:
    s = make(2)  # overlap skip by default
    fire_schedules(at(2))
    assert fire_schedules(at(4)) == {"fired": 0, "skipped": 1, "raced": 0}
    assert fires(s) == [at(2)] and reread(s).skipped == 1
    assert actions(s)[-1] == "skipped"
    [first] = tenant_jobs("fire")
    with db.begin() as conn:
        transitions.cancel(conn, first.id, "fire", actor="test", now=at(5))
    assert fire_schedules(at(6))["fired"] == 1, "the previous job finished: the next time fires"


def test_overlap_cancel_previous_cancels_the_unfinished_job_then_fires() -> None:
    s = make(2, overlap="cancel_previous")
    fire_schedules(at(2))
    assert fire_schedules(at(4))["fired"] == 1
    by_time = {j.scheduled_for: j for j in tenant_jobs("fire")}
    assert by_time[at(2)].state == JobState.CANCELLED and by_time[at(4)].state == JobState.QUEUED
    assert fires(s) == [at(2), at(4)]


def test_after_an_outage_only_the_catch_up_window_fires_and_the_rest_is_counted() -> None:
    s = make(2, overlap="allow", catch_up_seconds=5)
    got = fire_schedules(at(20))
    # due: 2, 4, ... 20; the window is [15, 20]
    assert fires(s) == [at(16), at(18), at(20)]
    assert got == {"fired": 3, "skipped": 7, "raced": 0}
    assert reread(s).skipped == 7 and "skipped" in actions(s)


def test_a_window_under_two_loop_periods_is_two_periods() -> None:
    period = get_settings().schedule_period_seconds
    s = make(1, overlap="allow", catch_up_seconds=0)
    fire_schedules(at(1 + period))  # the loop is `period` late: the fire at 1 is still made
    assert fires(s)[0] == at(1)


def test_a_paused_schedule_fires_nothing() -> None:
    s = make(2, overlap="allow", paused=True)
    assert fire_schedules(at(30))["fired"] == 0
    assert fires(s) == []


def test_a_fire_whose_job_no_longer_fits_is_skipped_and_audited() -> None:
    s = make(2, overlap="allow")
    with db.begin() as conn:
        conn.execute(sa.update(schedules).where(schedules.c.id == s.id).values(args={"wrong": 1}))
    assert fire_schedules(at(2)) == {"fired": 0, "skipped": 1, "raced": 0}
    assert actions(s)[-1] == "fire_failed" and reread(s).next_fire_at == at(4)


def test_trigger_fires_now_without_moving_the_timing() -> None:
    s = make(60)
    job = trigger(s, actor="test", now=at(5))
    assert job.schedule_id == s.id and job.scheduled_for == at(5)
    after = reread(s)
    assert after.next_fire_at == at(60) and after.last_job_id == job.id and after.fired == 1
    assert actions(s)[-1] == "triggered"


def spec(name: str, every: float = 5, **kw: Any) -> ScheduleSpec:
    return ScheduleSpec(
        name=name, type="examples.echo", timing=Timing(every_seconds=every), args={"message": name}, **kw
    )


def test_code_schedules_are_written_once_keep_their_state_and_pause_when_gone() -> None:
    tenant = get_settings().schedule_code_tenant
    assert declared.sync(T0, [spec("a"), spec("b")])["created"] == 2
    with db.connect() as conn:
        a = ledger.by_name(conn, tenant, "a")
    assert a is not None and a.origin == "code" and a.next_fire_at == at(5)
    fire_schedules(at(5))
    assert declared.sync(at(6), [spec("a"), spec("b")])["unchanged"] == 2
    assert reread(a).next_fire_at == at(10) and reread(a).fired == 1, "a restart keeps the state"
    assert declared.sync(at(7), [spec("a", every=3)]) == {
        "created": 0,
        "changed": 1,
        "unchanged": 0,
        "undeclared": 1,
        "clash": 0,
    }
    assert reread(a).every_seconds == 3 and reread(a).next_fire_at == at(10), "new timing: counted from now"
    with db.connect() as conn:
        b = ledger.by_name(conn, tenant, "b")
    assert b is not None and b.paused, "gone from the code: paused, not deleted"
    declared.sync(at(8), [spec("a", every=3), spec("b")])
    assert not reread(b).paused and reread(b).next_fire_at == at(13), "declared again: resumed from now"


def test_a_name_taken_over_the_api_is_left_alone() -> None:
    mine = make(60, tenant=get_settings().schedule_code_tenant, name="taken")
    assert declared.sync(T0, [spec("taken")])["clash"] == 1
    assert reread(mine).every_seconds == 60 and reread(mine).origin == "api"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (30, Timing(every_seconds=30.0)),
        (dt.timedelta(minutes=2), Timing(every_seconds=120.0)),
        ("*/5 * * * *", Timing(cron="*/5 * * * *")),
    ],
)
def test_celery_schedule_values_map_to_a_timing(value: Any, expected: Timing) -> None:
    assert declared.timing(value) == expected


def test_a_celery_crontab_maps_to_its_cron_expression() -> None:
    from celery.schedules import crontab

    got = declared.from_beat_entry(
        "nightly",
        {
            "task": "examples.echo",
            "schedule": crontab(minute=30, hour=2),
            "kwargs": {"message": "x"},
            "timezone": "Europe/Berlin",
        },
    )
    assert got.timing == Timing(cron="30 2 * * *", timezone="Europe/Berlin") and got.args == {"message": "x"}


def test_medic_schedules_list_shows_each_schedule_with_its_next_and_last_fire() -> None:
    from click.testing import CliRunner

    from worker.ops.cli import main

    s = make(2, name="listed", overlap="allow")
    make(5, name="elsewhere", tenant="other")
    fire_schedules(at(2))
    result = CliRunner().invoke(main, ["schedules", "list", "--tenant", "fire"])
    assert result.exit_code == 0, result.output
    header, *rows = [line.split("\t") for line in result.output.strip().splitlines()]
    assert [dict(zip(header, r, strict=True))["name"] for r in rows] == ["listed"]
    row = dict(zip(header, rows[0], strict=True))
    assert row["id"] == str(s.id) and row["timing"] == "every 2s" and row["state"] == "active"
    assert row["next"] == at(4).isoformat(timespec="seconds") and row["last"] == at(2).isoformat(timespec="seconds")
    assert row["fired"] == "1"
    everyone = CliRunner().invoke(main, ["schedules", "list"]).output
    assert "elsewhere" in everyone and "listed" in everyone


def test_dst_with_a_fixed_clock_the_loop_fires_each_local_time_once() -> None:
    """A daily 02:30 in Berlin, the loop run every 10 minutes of a fixed clock through both
    changes of 2026: one fire a day, none doubled in October's repeated hour, none lost in
    March's skipped one (made at 03:00, right after the jump)."""
    tz_spec = ScheduleSpec(
        name="dst", type="examples.echo", timing=Timing(cron="30 2 * * *", timezone="Europe/Berlin"),
        args={"message": "dst"}, queue=f"q-{uuid.uuid4().hex[:6]}", overlap="allow",
    )  # fmt: skip
    for start, expected in (
        (dt.datetime(2026, 10, 24, 12, tzinfo=dt.UTC), [(10, 25, 0, 30), (10, 26, 1, 30)]),
        (dt.datetime(2026, 3, 28, 12, tzinfo=dt.UTC), [(3, 29, 1, 0), (3, 30, 0, 30)]),
    ):
        clear()
        with db.begin() as conn:
            s = ledger.create(
                conn, new_values(tz_spec, tenant="fire", origin="api", now=start), actor="test", now=start
            )
        assert s is not None
        for step in range(2 * 24 * 6):
            fire_schedules(start + dt.timedelta(minutes=10 * step))
        assert fires(s) == [dt.datetime(2026, m, d, h, mi, tzinfo=dt.UTC) for m, d, h, mi in expected]


def test_a_fire_later_than_the_slack_raises_schedule_missed_and_resolves_once_made() -> None:
    """The health loop measures how late each schedule's next fire is; MedicScheduleMissed (its
    `for` is 0) fires past MEDIC_SCHEDULE_MISSED_SLACK_SECONDS, ignores paused schedules, and
    resolves once fire_schedules has made the fire."""
    from worker.control import alerts

    slack = get_settings().schedule_missed_slack_seconds
    make(2, overlap="allow", name="late-one")
    make(2, overlap="allow", name="paused-one", paused=True)

    def missed(now: dt.datetime) -> list[dict[str, Any]]:
        alerts.health_and_alerts(now, {})
        return [dict(a["labels"]) for a in alerts.active() if a["name"] == "MedicScheduleMissed" and a["firing"]]

    assert missed(at(2 + slack)) == [], "exactly the slack late: not yet"
    assert missed(at(2 + slack + 1)) == [{"tenant": "fire", "schedule": "late-one"}]
    fire_schedules(at(2 + slack + 1))
    assert missed(at(2 + slack + 1.5)) == [], "the fires were made: resolved"


def test_declared_reads_job_schedules_and_the_schedule_modules(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """`@job(schedule=...)` and a module's SCHEDULES dict (as beat_schedule.py holds) are both read."""
    import sys

    from worker.runtime.registry import job

    @job("tests.scheduled_echo", schedule={"every_seconds": 30, "args": {"message": "m"}, "overlap": "allow"})
    def scheduled_echo(message: str) -> str:
        return message

    (tmp_path / "my_beat_schedule.py").write_text(
        'SCHEDULES = {"from-beat": {"task": "examples.echo", "schedule": "*/5 * * * *", "kwargs": {"message": "b"}}}\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_beat_schedule", raising=False)
    s = get_settings().model_copy(update={"schedule_modules": ["my_beat_schedule", "no_such_module_here"]})
    found = {spec.name: spec for spec in declared.declared(s)}
    assert found["tests.scheduled_echo"] == ScheduleSpec(
        name="tests.scheduled_echo", type="tests.scheduled_echo", timing=Timing(every_seconds=30),
        args={"message": "m"}, overlap="allow",
    )  # fmt: skip
    assert found["from-beat"].timing == Timing(cron="*/5 * * * *") and found["from-beat"].args == {"message": "b"}


@pytest.mark.parametrize(
    "entry",
    [
        {"task": "examples.echo", "schedule": 5, "args": [1]},
        {"task": "examples.echo", "schedule": 5, "options": {"priority": 3}},
        {"task": "examples.echo", "schedule": object()},
        {"task": "examples.echo", "schedule": 5, "surprise": 1},
    ],
)
def test_a_beat_entry_medic_cannot_keep_is_refused(entry: dict[str, Any]) -> None:
    from worker.errors import InvalidArgsError

    with pytest.raises(InvalidArgsError):
        declared.from_beat_entry("x", entry)


def test_fires_committed_before_a_failing_schedule_are_still_published(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.control import fire
    from worker.errors import LedgerUnavailableError

    first = make(2, overlap="allow", created=T0)
    second = make(2, overlap="allow", created=T0 + dt.timedelta(seconds=1))  # due later: handled second
    real = fire._fire_one

    def failing_second(conn: Any, schedule: Schedule, *args: Any) -> None:
        if schedule.id == second.id:
            raise LedgerUnavailableError("the ledger went away")
        real(conn, schedule, *args)

    monkeypatch.setattr(fire, "_fire_one", failing_second)
    with pytest.raises(LedgerUnavailableError):
        fire_schedules(at(3))
    assert fires(first) == [at(2)] and inspect.depth(first.queue or "") == 1, "committed, then published"
