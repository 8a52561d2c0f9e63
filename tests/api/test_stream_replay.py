"""A stream's replay (`since=`) costs what it must and no more: a job_id replay reads that job's
events, not the ledger from 0; replay reads are bounded per key and per process and wait their
turn; `medic submit --wait` replays one job, not the ledger."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from api import stream_replay
from api.stream_hub import ClientQueue, Subscriber, Update
from tests import ROOT
from tests.api.test_stream import add_events, metric, open_stream, park_job, recv, subscribed
from tests.api.test_stream_bounds import hello
from tests.api.test_stream_load import make_jobs
from tests.conftest import KeyFactory
from worker.ledger import db, queries
from worker.testing.processes import Processes, wait_for


def _rows_touched(plan: dict[str, Any]) -> float:
    """Rows every node of an EXPLAIN ANALYZE plan produced or threw away, all loops counted."""
    loops = plan.get("Actual Loops", 1)
    own = (plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0)) * loops
    own += plan.get("Rows Removed by Index Recheck", 0) * loops
    return own + sum(_rows_touched(child) for child in plan.get("Plans", ()))


@contextlib.contextmanager
def statements() -> Iterator[list[tuple[str, Any]]]:
    """Every statement this process sends to the ledger meanwhile, with its parameters."""
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        seen.append((db.as_written(statement), parameters))

    engine = db.get_engine()
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def rows_read(recorded: list[tuple[str, Any]]) -> float:
    total = 0.0
    with db.connect() as conn:
        for statement, parameters in recorded:
            (plan,) = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters).scalar_one()
            total += _rows_touched(plan["Plan"])
    return total


def add_job_events(job: uuid.UUID, n: int, tag: str) -> None:
    with db.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO job_events (job_id, at, from_state, to_state, actor, reason, attempt)"
                " SELECT :job, now(), 'queued', 'queued', 'test', :tag || '-' || g, 0 FROM generate_series(1, :n) g"
            ),
            {"job": job, "tag": tag, "n": n},
        )
        conn.execute(sa.text("ANALYZE job_events"))


def replayed(sub: Subscriber, upto: int) -> list[Update]:
    """Run one replay in this process (slots of its own: this loop's), from `since=0`."""
    got: list[Update] = []

    async def send(update: Update) -> None:
        got.append(update)

    async def run() -> None:
        stream_replay._slots = stream_replay.ReplaySlots(2, 2)
        try:
            await stream_replay.replay(sub, upto, [0], send)
        finally:
            stream_replay._slots = None

    asyncio.run(run())
    return got


def subscriber(tenant: str, *job_ids: uuid.UUID) -> Subscriber:
    return Subscriber(tenant, uuid.uuid4(), 0, ClientQueue(10), frozenset(job_ids))


@pytest.mark.parametrize("watched", [1, 2])
def test_a_job_id_replay_from_0_reads_that_jobs_events_not_the_ledger(medic_env: dict[str, str], watched: int) -> None:
    # Bug caught: `since=0&job_id=X` (what `medic submit --wait` sends) walked the event table
    # from id 0 in 20,000-id windows: one read per window however few of X's events there are
    # (500 reads for a 10M-id ledger). Now: one read, on X's index, from X's first event.
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    noise, *jobs = make_jobs(tenant, 1 + watched)
    add_job_events(noise, 50_000, "noise")  # the same tenant's: the tenant filter does not help
    for job in jobs:
        add_job_events(job, 3, f"mine-{job.hex[:4]}")
    with db.connect() as conn:
        upto = queries.max_event_id(conn)
    with statements() as recorded:
        got = replayed(subscriber(tenant, *jobs), upto)
    assert sorted({u.job_id for u in got}) == sorted(jobs) and len(got) == 3 * watched
    assert [u.id for u in got] == sorted(u.id for u in got)
    assert len(recorded) == 1, [statement[:60] for statement, _ in recorded]
    touched = rows_read(recorded)
    assert 0 < touched < 100, f"a replay of {3 * watched} events read {touched:.0f} rows"


def test_replay_reads_are_bounded_per_key_and_per_process() -> None:
    # Bug caught: one key's replays (since=0 on many streams) took every replay thread of the
    # process, or replays had no bound at all and stalled every stream's tail.
    running: collections.Counter[str] = collections.Counter()
    most: collections.Counter[str] = collections.Counter()
    done: list[str] = []

    async def read(slots: stream_replay.ReplaySlots, key: uuid.UUID, name: str) -> None:
        async with slots.slot(key):
            running[name] += 1
            running["all"] += 1
            most[name] = max(most[name], running[name])
            most["all"] = max(most["all"], running["all"])
            for _ in range(5):
                await asyncio.sleep(0)
            running[name] -= 1
            running["all"] -= 1
        done.append(name)

    async def run() -> None:
        slots = stream_replay.ReplaySlots(per_process=3, per_key=2)
        keys = {name: uuid.uuid4() for name in "abcd"}
        await asyncio.gather(*(read(slots, keys[name], name) for name in "aaaaaabbbbbbccccccdddddd"))
        assert slots.keys == {} and slots.users == {}  # nothing kept for keys gone
        # on the replay pool, not the default executor the tail's and key checks' reads share
        (thread,) = await slots.read(uuid.uuid4(), lambda: [threading.current_thread().name])
        assert thread.startswith("medic-replay")

    asyncio.run(run())
    assert len(done) == 24  # every read waited its turn: none refused
    assert most["all"] == 3 and max(most[name] for name in "abcd") == 2


def test_a_live_api_makes_replays_wait_on_the_key_then_the_process_bound(
    procs: Processes, make_key: KeyFactory
) -> None:
    _, api = procs.api("replay-api", MEDIC_WS_REPLAY_MAX_PER_KEY="1", MEDIC_WS_REPLAY_MAX_PER_PROCESS="2")
    keys = [make_key()[1] for _ in range(3)]
    jobs = [park_job(api, key) for key in keys]
    for job in jobs:
        add_events(job, 2, "old")
    with contextlib.ExitStack() as streams:
        hello(streams.enter_context(open_stream(api, keys[0])))  # the tail has started
        opened = []
        with db.get_engine().connect() as locker:
            locker.begin()
            # every replay read now blocks on the table: reads pile up at the bounds
            locker.execute(sa.text("LOCK TABLE job_events IN ACCESS EXCLUSIVE MODE"))
            for i, key in enumerate([keys[0], keys[0], keys[1], keys[2]]):
                ws = streams.enter_context(open_stream(api, key, job_id=jobs[keys.index(key)], since=0))
                subscribed(ws)
                opened.append(ws)
                wait_for(lambda n=i + 1: _replays(api) == n, 10, 0.05, f"{i + 1} replays counted")
            # key 0's second read waits on its key; key 2's on the process (key 0 and 1 run)
            assert _replay_gauges(api) == (2, 1, 1)
            locker.rollback()
        for ws in opened:  # and each, once the table is free, gets its replay: waited, not refused
            assert [recv(ws)["reason"] for _ in range(3)][1:] == ["old-1", "old-2"]
    assert _replay_gauges(api) == (0, 0, 0)


def _replay_gauges(api: str) -> tuple[float, float, float]:
    return (
        metric(api, "medic_stream_replay_reads_running"),
        metric(api, 'medic_stream_replay_waiting{bound="key"}'),
        metric(api, 'medic_stream_replay_waiting{bound="process"}'),
    )


def _replays(api: str) -> float:
    return sum(_replay_gauges(api))


def test_submit_wait_replays_its_job_not_the_ledger(
    procs: Processes, stack: str, medic_env: dict[str, str], make_key: KeyFactory
) -> None:
    # Bug caught: `medic submit --wait` opens `job_id=<id>&since=0`, and the replay walked every
    # id from 0 in 20,000-id windows: here 50,000 ids (an empty range still costs a read each).
    with db.begin() as conn:
        conn.execute(
            sa.text(
                "SELECT setval(pg_get_serial_sequence('job_events', 'id'),"
                " nextval(pg_get_serial_sequence('job_events', 'id')) + 50000)"
            )
        )
    _, api = procs.api("wait-api")  # its own, so its replay counter is this test's alone
    _, key = make_key()
    env = {**medic_env, "MEDIC_API_KEY": key, "MEDIC_API_URL": api}
    done = subprocess.run(
        [sys.executable, "-m", "worker.ops.cli", "submit", "examples.echo", "--args", '{"message": "x"}', "--wait"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout[done.stdout.rindex("\n{") :])["state"] == "succeeded"
    assert " -> succeeded" in done.stderr  # followed over the stream, not polled
    assert metric(api, "medic_stream_replay_reads_total") == 1
