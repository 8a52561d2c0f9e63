"""The dispatcher on PostgreSQL and SQLite: held jobs of types that declare a key or a rate (or
on a dispatched queue) are moved to `queued` only as their limits allow, in fair and aged order."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
import sqlalchemy as sa

from worker.accept import enqueue
from worker.accept.validate import JobRequest, new_job
from worker.clock import seconds, utcnow
from worker.ledger import db, dispatch, queries, transitions
from worker.ledger.models import jobs
from worker.ledger.records import Job
from worker.ledger.states import JobState
from worker.settings import Settings, get_settings

STEP = dt.timedelta(milliseconds=1)


def _queue() -> str:
    return f"q-{uuid.uuid4().hex[:10]}"


def _settings(**update: Any) -> Settings:
    return get_settings().model_copy(update=update)


def _held(
    engine: sa.Engine,
    type_: str,
    args: Sequence[dict[str, Any]],
    *,
    queue: str,
    t0: dt.datetime,
    tenant: str | None = None,
    priority: int = 0,
    s: Settings | None = None,
) -> list[Job]:
    """Held jobs as accept makes them (validated against their type's declaration), created one
    millisecond apart from `t0` so the line order is their order here. The tenant is the queue's
    own unless given: flow keys are global, and a test's keys must not meet another's."""
    s = s or get_settings()
    tenant = tenant or f"t-{queue}"
    news = [
        new_job(JobRequest(type_, a, queue, priority, None, None, None), tenant=tenant, s=s, now=t0 + i * STEP)
        for i, a in enumerate(args)
    ]
    with engine.begin() as conn:
        made = transitions.create_jobs(conn, news, actor="test", now=t0)
    assert {j.state for j in made} == {JobState.HELD.value}
    return made


def _dispatch(engine: sa.Engine, queue: str, now: dt.datetime, s: Settings | None = None, **kw: Any) -> list[Job]:
    with engine.begin() as conn:
        return dispatch.dispatch(conn, queue, actor="test", now=now, s=s, **kw)


def _live(engine: sa.Engine, queue: str) -> Counter[str]:
    """Jobs queued or running per concurrency key, read from the rows."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(jobs.c.flow_key, sa.func.count())
            .where(jobs.c.queue == queue, jobs.c.state.in_(dispatch.LIVE))
            .group_by(jobs.c.flow_key)
        )
        return Counter({str(k): int(n) for k, n in rows})


def _finish(engine: sa.Engine, job: Job, now: dt.datetime) -> None:
    """Claim and succeed one dispatched job, as a worker would."""
    with engine.begin() as conn:
        running = transitions.claim(conn, job.id, job.delivery_id, worker="w@test", pid=1, now=now, lease_s=30)
        assert running is not None
        assert transitions.succeed(conn, job.id, job.delivery_id, None, actor="test", now=now) is not None


@pytest.mark.parametrize(("type_", "limit"), [("examples.per_account", 1), ("tests.keyed3", 3)])
def test_a_keys_limit_is_never_exceeded_and_a_freed_slot_lets_exactly_the_next_go(
    engine: sa.Engine, type_: str, limit: int
) -> None:
    queue, t0 = _queue(), utcnow()
    extra = {"seconds": 0.1} if type_ == "examples.per_account" else {}
    made = _held(engine, type_, [{"account": acc, **extra} for _ in range(8) for acc in ("x", "y")], queue=queue, t0=t0)
    key_of = {j.id: j.flow_key for j in made}
    line = {k: [j.id for j in made if j.flow_key == k] for k in set(key_of.values())}
    started: dict[str | None, list[uuid.UUID]] = {k: [] for k in line}
    out: list[Job] = []
    for _ in range(3):  # dispatching again changes nothing while no slot freed
        for job in _dispatch(engine, queue, t0):
            started[job.flow_key].append(job.id)
            out.append(job)
        assert max(_live(engine, queue).values()) <= limit
    assert {k: len(v) for k, v in started.items()} == dict.fromkeys(line, limit)

    while out:
        done = out.pop(0)
        _finish(engine, done, t0)
        went = _dispatch(engine, queue, t0, keys=[done.flow_key])
        left = len(line[done.flow_key]) - len(started[done.flow_key])
        assert [j.flow_key for j in went] == ([done.flow_key] if left else [])
        for job in went:
            started[job.flow_key].append(job.id)
            out.append(job)
        assert max(_live(engine, queue).values(), default=0) <= limit
    assert started == line, "each key's jobs start in their line order"


def test_a_key_behind_many_blocked_ones_still_goes_when_its_key_is_named(engine: sa.Engine) -> None:
    queue, t0 = _queue(), utcnow()
    s = _settings(dispatch_scan=10)
    _held(engine, "examples.per_account", [{"account": "busy", "seconds": 1}] * 40, queue=queue, t0=t0, s=s)
    [other] = _held(
        engine, "examples.per_account", [{"account": "free", "seconds": 1}], queue=queue, t0=t0 + seconds(1), s=s
    )
    assert [j.flow_key for j in _dispatch(engine, queue, t0, s)] == [f"t-{queue}|examples.per_account|busy"]
    went = _dispatch(engine, queue, t0, s, keys=[other.flow_key])
    assert [j.id for j in went] == [other.id]


def _fair_picks(engine: sa.Engine, s: Settings, queue: str, t0: dt.datetime) -> Counter[str]:
    _held(engine, "examples.echo", [{"message": "a"}] * 500, queue=queue, t0=t0, tenant="t-a", s=s)
    _held(engine, "examples.echo", [{"message": "b"}] * 5, queue=queue, t0=t0 + seconds(1), tenant="t-b", s=s)
    picked = _dispatch(engine, queue, t0 + seconds(2), s)
    assert len(picked) == s.dispatch_window
    return Counter(j.tenant for j in picked)


def test_fair_share_a_small_tenant_is_not_behind_a_big_ones_backlog(engine: sa.Engine) -> None:
    queue = _queue()
    s = _settings(dispatch_queues=[queue], dispatch_window=16)
    picks = _fair_picks(engine, s, queue, utcnow())
    assert picks == {"t-a": 11, "t-b": 5}, "B's 5, created after A's 500, all go in the first window"


def test_fair_share_weights_shift_the_share(engine: sa.Engine) -> None:
    queue = _queue()
    s = _settings(dispatch_queues=[queue], dispatch_window=16, tenant_weights={"t-a": 3.0})
    picks = _fair_picks(engine, s, queue, utcnow())
    assert picks == {"t-a": 12, "t-b": 4}, "weight 3 to 1: A gets three of every four picks"


def test_a_dispatched_queue_keeps_at_most_its_window_out(engine: sa.Engine) -> None:
    queue, t0 = _queue(), utcnow()
    s = _settings(dispatch_queues=[queue], dispatch_window=4)
    _held(engine, "examples.echo", [{"message": "a"}] * 10, queue=queue, t0=t0, s=s)
    first = _dispatch(engine, queue, t0, s)
    assert len(first) == 4
    assert _dispatch(engine, queue, t0, s) == []
    _finish(engine, first[0], t0)
    assert len(_dispatch(engine, queue, t0, s)) == 1


def test_priority_ages_a_high_priority_job_passes_younger_ones_only(engine: sa.Engine) -> None:
    """Rank = creation - priority x aging: a priority-9 job passes priority-0 jobs less than 9
    aging steps older, not older ones (their wait is bounded)."""
    queue, t0 = _queue(), utcnow()
    s = _settings(dispatch_queues=[queue], dispatch_window=1, priority_aging_seconds=60)
    nine_steps = seconds(9 * 60)
    [old] = _held(engine, "examples.echo", [{"message": "old"}], queue=queue, t0=t0 - nine_steps - seconds(30), s=s)
    [young] = _held(engine, "examples.echo", [{"message": "young"}], queue=queue, t0=t0 - seconds(60), s=s)
    [urgent] = _held(engine, "examples.echo", [{"message": "urgent"}], queue=queue, t0=t0, priority=9, s=s)
    order = []
    for _ in range(3):
        [job] = _dispatch(engine, queue, t0, s)
        order.append(job.id)
        _finish(engine, job, t0)
    assert order == [old.id, urgent.id, young.id]


def test_a_paused_queue_dispatches_nothing_until_resumed(engine: sa.Engine) -> None:
    queue, t0 = _queue(), utcnow()
    _held(engine, "examples.per_account", [{"account": "x", "seconds": 1}], queue=queue, t0=t0)
    with engine.begin() as conn:
        dispatch.set_paused(conn, queue, paused=True, actor="test", now=t0)
    assert _dispatch(engine, queue, t0) == []
    with engine.begin() as conn:
        dispatch.set_paused(conn, queue, paused=False, actor="test", now=t0)
    assert len(_dispatch(engine, queue, t0)) == 1


def test_accepted_held_jobs_wait_for_the_dispatcher(pg_engine: sa.Engine) -> None:
    """Through accept (PostgreSQL, the process's ledger): on a paused queue the jobs stay held;
    resumed, one dispatch sends one job of the key."""
    queue, t0 = _queue(), utcnow()
    with db.begin() as conn:
        dispatch.set_paused(conn, queue, paused=True, actor="test", now=t0)
    ids = [enqueue("examples.per_account", {"account": queue, "seconds": 1}, queue=queue).job.id for _ in range(3)]
    with db.connect() as conn:
        assert {queries.get_job(conn, i).state for i in ids} == {"held"}  # type: ignore[union-attr]
    with db.begin() as conn:
        dispatch.set_paused(conn, queue, paused=False, actor="test", now=t0)
    assert [j.id for j in _dispatch(pg_engine, queue, utcnow())] == ids[:1]


def test_rate_jobs_are_sent_ahead_each_with_its_tokens_eta_up_to_the_horizon(engine: sa.Engine) -> None:
    """A bucket's held jobs go out ahead of their tokens, one interval apart from the bucket's
    next token, as far as the horizon (2 x the dispatch period) and no further; the claim takes
    the token, and the next dispatch counts from there."""
    queue, t0, bucket = _queue(), utcnow(), uuid.uuid4().hex
    s = _settings(dispatch_period_seconds=0.5)  # horizon 1 s: tokens at +0, +0.2, ... +1.0
    made = _held(engine, "tests.rated", [{"bucket": bucket}] * 10, queue=queue, t0=t0)
    key = made[0].rate_key
    assert key is not None
    sent = _dispatch(engine, queue, t0, s)
    assert [j.id for j in sent] == [j.id for j in made[:6]], "in line order, as far as the horizon"
    etas = [j.not_before for j in sent]
    assert etas[0] is None, "an empty bucket: the first at once"
    assert etas[1:] == [t0 + seconds(0.2 * i) for i in range(1, 6)], "each its own token's time"
    assert _dispatch(engine, queue, t0, s) == [], "the horizon is full"
    with engine.begin() as conn:  # the first claim takes the token: the bucket's next is due at t0 + 0.2 s
        assert dispatch.take_token(conn, key, 0.2, t0) is None
        assert transitions.claim(conn, sent[0].id, sent[0].delivery_id, worker="w", pid=1, now=t0, lease_s=30)
    [seventh] = _dispatch(engine, queue, t0 + seconds(0.2), s)
    assert seventh.id == made[6].id
    assert seventh.not_before == t0 + seconds(0.2 + 5 * 0.2), "after the five still out, one interval apart"
    with engine.begin() as conn:  # a bucket whose next token is beyond the horizon sends nothing
        conn.execute(sa.text("UPDATE rate_buckets SET tat = :tat WHERE key = :k"), {"tat": t0 + seconds(60), "k": key})
        conn.execute(sa.update(jobs).where(jobs.c.rate_key == key, jobs.c.state == "queued").values(state="running"))
    assert _dispatch(engine, queue, t0 + seconds(0.2), s) == []


def test_take_token_keeps_any_window_to_the_rate_plus_one(engine: sa.Engine) -> None:
    """GCRA with half an interval of tolerance: asked every 50 ms for 8 s at 5/s, the grants are
    never closer than half an interval, and any 1 s window (of the asks' times) holds at most 6."""
    key, t0, interval = uuid.uuid4().hex, utcnow(), 0.2
    granted: list[dt.datetime] = []
    now = t0
    with engine.begin() as conn:
        for _ in range(160):
            due = dispatch.take_token(conn, key, interval, now)
            if due is None:
                granted.append(now)
            else:
                assert due > now, "a refusal names a later time"
            now += seconds(0.05)
    assert all(b - a >= seconds(interval / 2) for a, b in itertools.pairwise(granted))
    most = max(sum(1 for g in granted if start <= g < start + seconds(1)) for start in granted)
    assert most <= 6
    assert len(granted) >= 8 * 5 - 1, "the rate is kept, not undercut"


def test_take_token_tolerates_a_start_late_by_less_than_half_an_interval(engine: sa.Engine) -> None:
    """A start that came 0.08 s late (its ETA's jitter) does not push the next one's token: the
    next, on its own time, is granted (no tolerance would park it)."""
    key, t0 = uuid.uuid4().hex, utcnow()
    with engine.begin() as conn:
        assert dispatch.take_token(conn, key, 0.2, t0) is None
        assert dispatch.take_token(conn, key, 0.2, t0 + seconds(0.28)) is None  # 0.08 s late
        assert dispatch.take_token(conn, key, 0.2, t0 + seconds(0.4)) is None  # on its own time
        assert dispatch.take_token(conn, key, 0.2, t0 + seconds(0.45)) is not None  # early: refused


def test_park_puts_a_delivery_back_to_held_in_its_place(engine: sa.Engine) -> None:
    queue, t0 = _queue(), utcnow()
    [job] = _held(engine, "examples.per_account", [{"account": "x", "seconds": 1}], queue=queue, t0=t0)
    [sent] = _dispatch(engine, queue, t0)
    later = t0 + seconds(5)
    with engine.begin() as conn:
        assert dispatch.park(conn, sent.id, uuid.uuid4(), reason="paused", actor="t", now=t0) is None, "stale delivery"
        parked = dispatch.park(
            conn, sent.id, sent.delivery_id, reason="rate_limited", actor="t", now=t0, not_before=later
        )
    assert parked is not None
    assert (parked.state, parked.not_before, parked.published_at) == ("held", later, None)
    assert parked.dispatch_rank == job.dispatch_rank, "it keeps its place in line"
    assert _dispatch(engine, queue, t0) == [], "not before its not_before"
    assert [j.id for j in _dispatch(engine, queue, later)] == [job.id]


def test_a_claim_over_the_rate_parks_the_job_held_until_its_token_not_failed(engine: sa.Engine) -> None:
    """The worker's claim of a rate-limited job whose bucket has no token due (a delivery that
    came early): the job is parked `held` until the token, its attempt not spent, and is sent
    again from there."""
    from worker.runtime.task import _claim_with_token

    queue, t0, bucket = _queue(), utcnow(), uuid.uuid4().hex
    [made] = _held(engine, "tests.rated", [{"bucket": bucket}], queue=queue, t0=t0)
    [sent] = _dispatch(engine, queue, t0)
    assert made.rate_key is not None
    with engine.begin() as conn:  # another start took the token just now
        assert dispatch.take_token(conn, made.rate_key, 0.2, utcnow()) is None
        tat = conn.execute(sa.text("SELECT tat FROM rate_buckets WHERE key = :k"), {"k": made.rate_key}).scalar_one()
    with engine.begin() as conn:
        claimed, bucket = _claim_with_token(conn, sent.id, sent.delivery_id, "w@test", 1, 30.0)
    assert claimed is None and bucket == (queue, made.rate_key), "parked; its bucket's next may be sent"
    with engine.connect() as conn:
        row = queries.get_job(conn, sent.id)
        last = queries.get_events(conn, sent.id)[-1]
    assert row is not None
    assert (row.state, row.attempts, row.error) == ("held", 0, None), "delayed, not failed"
    # held until the token is due, less the tolerance (half the interval)
    assert row.not_before is not None and row.not_before.timestamp() == pytest.approx(_ts(tat) - 0.1)
    assert (last.from_state, last.to_state, last.reason) == ("queued", "held", "rate_limited")
    [again] = _dispatch(engine, queue, row.not_before)
    assert again.id == sent.id and again.delivery_id != sent.delivery_id


def _ts(value: Any) -> float:
    """A timestamp column read by raw SQL (SQLite gives text)."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return float(value.timestamp())
