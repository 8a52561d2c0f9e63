"""The schedule writes on both backends (PostgreSQL and the single-host SQLite ledger): a name once
per tenant, the fire loop's compare-and-set, one job per (schedule, time), the change
compare-and-set, the audit; and the whole fire loop on SQLite."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tests.conftest import switched_env
from tests.ledger.make import a_new_job
from worker.accept.fire_times import Timing
from worker.accept.schedules import ScheduleSpec, new_values
from worker.ledger import schedules as ledger
from worker.ledger import transitions
from worker.ledger.migrate import upgrade
from worker.ledger.models import jobs
from worker.ledger.schedules import Schedule

T0 = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)


def values(name: str = "s", tenant: str | None = None, **kw: Any) -> dict[str, Any]:
    spec = ScheduleSpec(name=name, type="examples.echo", timing=Timing(every_seconds=2), args={"message": "x"}, **kw)
    return new_values(spec, tenant=tenant or f"t-{uuid.uuid4().hex[:6]}", origin="api", now=T0)


def made(engine: sa.Engine, **kw: Any) -> Schedule:
    with engine.begin() as conn:
        s = ledger.create(conn, values(**kw), actor="test", now=T0)
    assert s is not None
    return s


def test_a_name_is_taken_once_per_tenant(engine: sa.Engine) -> None:
    first = made(engine, name="n", tenant="t-name")
    with engine.begin() as conn:
        assert ledger.create(conn, values("n", "t-name"), actor="test", now=T0) is None
        assert ledger.create(conn, values("n", "t-other"), actor="test", now=T0) is not None
        assert [e.action for e in ledger.events(conn, first.id)] == ["created"]


def test_advance_moves_the_next_fire_once_from_what_was_read(engine: sa.Engine) -> None:
    s = made(engine)
    assert s.next_fire_at == T0 + dt.timedelta(seconds=2)
    with engine.begin() as conn:
        assert ledger.advance(conn, s, T0 + dt.timedelta(seconds=4))
        assert not ledger.advance(conn, s, T0 + dt.timedelta(seconds=4)), "a stale view changes nothing"
        found = ledger.get(conn, s.id)
    assert found is not None and found.next_fire_at == T0 + dt.timedelta(seconds=4)


def test_advance_does_nothing_to_a_paused_schedule(engine: sa.Engine) -> None:
    s = made(engine, paused=True)
    with engine.begin() as conn:
        assert not ledger.advance(conn, s, T0 + dt.timedelta(seconds=4))


def test_one_job_per_schedule_and_time(engine: sa.Engine) -> None:
    s = made(engine)
    with engine.begin() as conn:
        first = transitions.create_fire(conn, a_new_job("sched"), s.id, T0, actor="t", now=T0)
        again = transitions.create_fire(conn, a_new_job("sched"), s.id, T0, actor="t", now=T0)
        other = transitions.create_fire(conn, a_new_job("sched"), s.id, T0 + dt.timedelta(seconds=2), actor="t", now=T0)
        n = conn.execute(sa.select(sa.func.count()).where(jobs.c.schedule_id == s.id)).scalar_one()
    assert first is not None and first.schedule_id == s.id and first.scheduled_for == T0
    assert again is None and other is not None and n == 2


def test_a_change_applies_only_to_the_version_it_read(engine: sa.Engine) -> None:
    s = made(engine)
    later = T0 + dt.timedelta(seconds=1)
    with engine.begin() as conn:
        changed = ledger.update(conn, s, {"paused": True}, actor="a", action="paused", now=later)
        stale = ledger.update(conn, s, {"args": {"message": "y"}}, actor="b", action="changed", now=later)
        assert changed is not None and changed.paused and stale is None
        assert [e.action for e in ledger.events(conn, s.id)] == ["paused", "created"]
        assert ledger.delete(conn, changed, actor="a", now=later)
        assert ledger.get(conn, s.id) is None
        assert ledger.events(conn, s.id)[0].action == "deleted", "the audit outlives the schedule"


def test_the_fire_loop_runs_on_the_sqlite_ledger(medic_env: dict[str, str], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'single-host.db'}"
    upgrade(url)
    with switched_env({"MEDIC_DATABASE_URL": url}):
        from worker.control.fire import fire_schedules
        from worker.ledger import db

        queue = f"q-{uuid.uuid4().hex[:6]}"
        with db.begin() as conn:
            s = ledger.create(conn, values(queue=queue, overlap="allow"), actor="test", now=T0)
        assert s is not None
        assert fire_schedules(T0 + dt.timedelta(seconds=6))["fired"] == 3
        assert fire_schedules(T0 + dt.timedelta(seconds=6))["fired"] == 0
        with db.connect() as conn:
            got = [r[0] for r in conn.execute(sa.select(jobs.c.scheduled_for).where(jobs.c.schedule_id == s.id))]
            after = ledger.get(conn, s.id)
    assert sorted(got) == [T0 + dt.timedelta(seconds=k) for k in (2, 4, 6)]
    assert after is not None and after.fired == 3 and after.next_fire_at == T0 + dt.timedelta(seconds=8)
