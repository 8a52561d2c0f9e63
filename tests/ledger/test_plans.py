"""The control loops' and the job list's reads stay index ranges with a LIMIT on a ledger of real size.

Each query function runs for real against ~100k jobs; the SQL it sent is captured and run again
under EXPLAIN ANALYZE. A plan fails if it reads jobs or job_events sequentially, uses another
index than the one named for it, or reads more rows (summed over every node of the plan) than a
bounded read would: a sort of every candidate before the LIMIT, a bitmap of every queued job, or
an index walk over a tenant's whole history that filters as it goes.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from worker.clock import seconds, utcnow
from worker.ledger import queries
from worker.ledger.db import as_written, make_engine
from worker.ledger.models import jobs

pytestmark = pytest.mark.timeout(120)

JOBS = 100_000
LIMIT = 100
# A bounded read touches a few LIMITs' worth of rows; tenant-0's history alone is 50k rows,
# the queued backlog 4,000, the running set 2,000.
MAX_READ = 10 * LIMIT

# A realistic mix: 90% succeeded, 3% dead, 1% cancelled, 4% queued (a tenth never published,
# some due later), 2% running; finished over the last 31 days (retention 30); half the jobs
# belong to one big tenant, the rest to 19 others; 10 types over 4 queues, and a rare type and a
# rare queue (what a filtered list that walks the tenant's history would scan the most for).
FILL = """
INSERT INTO jobs (id, type, queue, priority, tenant, args, result, state, attempts, max_attempts,
                  timeout_s, backoff_s, delivery_id, created_at, updated_at, published_at, started_at,
                  finished_at, not_before, lease_expires_at)
SELECT gen_random_uuid(), CASE WHEN i % 500 = 0 THEN 'rare' ELSE 'type-' || (i % 10) END,
       CASE WHEN i % 700 = 0 THEN 'q-rare' ELSE 'q-' || (i % 4) END, 0,
       CASE WHEN i % 2 = 0 THEN 'tenant-0' ELSE 'tenant-' || (1 + i % 19) END,
       '{"message": "some realistic payload of a few dozen bytes"}'::jsonb,
       CASE WHEN m < 90 THEN '{"ok": true}'::jsonb END,
       CASE WHEN m < 90 THEN 'succeeded' WHEN m < 93 THEN 'dead' WHEN m < 94 THEN 'cancelled'
            WHEN m < 98 THEN 'queued' ELSE 'running' END,
       1, 3, CASE WHEN i % 7 = 0 THEN 3600 ELSE 60 END, 2, gen_random_uuid(), t, t,
       CASE WHEN m = 94 AND i % 10 = 0 THEN NULL ELSE t END,
       CASE WHEN m >= 98 THEN :now - make_interval(secs => i % 7200) WHEN m < 94 THEN t END,
       CASE WHEN m < 94 THEN t END,
       CASE WHEN m = 95 THEN :now + interval '1 hour' END,
       CASE WHEN m >= 98 THEN :now + interval '10 seconds' END
FROM (SELECT i, i % 100 AS m, :now - make_interval(secs => (:jobs - i) * 26.8) AS t
      FROM generate_series(1, :jobs) AS i) AS g
"""
EVENTS = """
INSERT INTO job_events (job_id, at, to_state, actor, reason, attempt)
SELECT id, created_at, state, 'fill', 'x', 1 FROM jobs
"""


@pytest.fixture(scope="module")
def ledger(private_ledger: dict[str, str]) -> Iterator[sa.Engine]:
    engine = make_engine(private_ledger["MEDIC_DATABASE_URL"])
    with engine.begin() as conn:
        conn.execute(sa.text(FILL), {"now": utcnow(), "jobs": JOBS})
        conn.execute(sa.text(EVENTS))
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE jobs, job_events")
    yield engine
    engine.dispose()


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def explain(conn: Connection, call: Callable[[Connection], object]) -> list[dict[str, Any]]:
    """Run `call`, then EXPLAIN ANALYZE the one statement it sent on the same connection (so a
    test may change the schema in its transaction first); every node of the plan."""
    sent: list[tuple[str, Any]] = []

    def grab(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        sent.append((statement, parameters))

    sa.event.listen(conn, "before_cursor_execute", grab)
    try:
        call(conn)
    finally:
        sa.event.remove(conn, "before_cursor_execute", grab)
    assert len(sent) == 1, sent
    statement, parameters = sent[0]
    raw: Any = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {as_written(statement)}", parameters).scalar()
    doc = raw if isinstance(raw, list) else json.loads(raw)
    return list(_nodes(doc[0]["Plan"]))


def rows_read(nodes: list[dict[str, Any]]) -> int:
    """Every row every node produced or threw away, over all its loops.

    Summed over the whole tree, not only the nodes that name a table: a Bitmap Index Scan names
    only its index, and it reads every matching entry before its Bitmap Heap Scan stops at the
    LIMIT (4,000 queued entries for one tenant's quota count when the quota index is missing).
    Parent nodes count their children's rows again: a bound on the sum is a bound on each.
    """
    dropped = ("Rows Removed by Filter", "Rows Removed by Index Recheck", "Rows Removed by Join Filter")
    return sum((n["Actual Rows"] + sum(n.get(k, 0) for k in dropped)) * n["Actual Loops"] for n in nodes)


def indexes_used(nodes: list[dict[str, Any]]) -> set[str]:
    return {n["Index Name"] for n in nodes if "Index Name" in n}


def assert_bounded(nodes: list[dict[str, Any]], index: str | frozenset[str]) -> None:
    """No sequential scan, the one index expected (or the set, for a read of two ranges), and few
    rows read (kept or discarded).

    A sort is allowed only of what such a bounded read returned: a sort of the whole candidate
    set (the queued backlog, every running job) fails on the number of rows read.
    """
    assert [n for n in nodes if n.get("Relation Name") in ("jobs", "job_events")], nodes
    assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], nodes
    expected = {index} if isinstance(index, str) else set(index)
    assert indexes_used(nodes) == expected, (indexes_used(nodes), nodes)
    read = rows_read(nodes)
    assert read <= MAX_READ, (read, nodes)


NOW = utcnow()
# Each read, and the one index that serves it as a range stopping at the LIMIT (or the indexes:
# the quota's count is two ranges, queued and held).
CASES: dict[str, tuple[Callable[[Connection], object], str | frozenset[str]]] = {
    "overdue": (lambda c: queries.overdue(c, NOW, 10.0, LIMIT), "ix_jobs_state_started_at"),
    "unpublished": (lambda c: queries.unpublished(c, LIMIT), "ix_jobs_state_published_at_created_at"),
    "published_before": (
        lambda c: queries.published_before(c, NOW, LIMIT),
        "ix_jobs_state_published_at_created_at",
    ),
    "queued_since_before": (
        lambda c: queries.queued_since_before(c, NOW - seconds(300), LIMIT),
        "ix_jobs_state_published_at_created_at",
    ),
    "finished_before": (
        lambda c: queries.finished_before(c, NOW - dt.timedelta(days=30), LIMIT),
        "ix_jobs_finished",
    ),
    "list_jobs": (lambda c: queries.list_jobs(c, "tenant-0", limit=LIMIT), "ix_jobs_tenant_created"),
    "list_jobs_state": (
        lambda c: queries.list_jobs(c, "tenant-0", state="queued", limit=LIMIT),
        "ix_jobs_tenant_state_created_at_id",
    ),
    "list_jobs_state_page_2": (
        lambda c: queries.list_jobs(
            c, "tenant-0", state="dead", limit=LIMIT, before=(NOW - dt.timedelta(days=10), uuid.UUID(int=2**128 - 1))
        ),
        "ix_jobs_tenant_state_created_at_id",
    ),
    "list_jobs_type": (
        lambda c: queries.list_jobs(c, "tenant-0", type_="rare", limit=LIMIT),
        "ix_jobs_tenant_type_created_at_id",
    ),
    "list_jobs_queue": (
        lambda c: queries.list_jobs(c, "tenant-0", queue="q-rare", limit=LIMIT),
        "ix_jobs_tenant_queue_created_at_id",
    ),
    # the admission quota: a tenant's queued and held jobs counted up to the quota
    "tenant_queued": (
        lambda c: queries.tenant_queued(c, "tenant-0", up_to=LIMIT),
        frozenset({"ix_jobs_tenant_state_created_at_id", "ix_jobs_held_queue_tenant_rank"}),
    ),
    "tenant_queued_in_queue": (
        lambda c: queries.tenant_queued(c, "tenant-0", up_to=LIMIT, queue="q-0"),
        frozenset({"ix_jobs_state_queue_created_at_not_before", "ix_jobs_held_queue_tenant_rank"}),
    ),
    # admission's depth: a queue's held jobs counted up to past its hard limit
    "held_in_queue": (
        lambda c: queries.held_in_queue(c, "q-0", up_to=LIMIT),
        "ix_jobs_held_queue_tenant_rank",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_read_is_an_index_range_with_a_limit(ledger: sa.Engine, name: str) -> None:
    call, index = CASES[name]
    with ledger.connect() as conn, conn.begin():
        nodes = explain(conn, call)
    assert_bounded(nodes, index)
    print(f"\n{name}: {index}, {rows_read(nodes)} rows over {len(nodes)} nodes")


# The console's time filters (issue 23): a range of created_at, alone, with a state, or with the
# args text, must bound the index walk itself (both ends in the scan's Index Cond), not filter what
# a walk over the tenant's whole history reaches. The args text is then checked on the range's rows
# only: a text no job has reads the 4 hours' ~270 rows of tenant-0, not its 50k.
DAY = dt.timedelta(days=1)
RANGED: dict[str, tuple[Callable[[Connection], object], str]] = {
    "list_jobs_created_range": (
        lambda c: queries.list_jobs(
            c, "tenant-0", created_after=NOW - 10 * DAY, created_before=NOW - 10 * DAY + seconds(3600), limit=LIMIT
        ),
        "ix_jobs_tenant_created",
    ),
    "list_jobs_state_range": (
        lambda c: queries.list_jobs(
            c, "tenant-0", state="dead", created_after=NOW - 20 * DAY, created_before=NOW - 19 * DAY, limit=LIMIT
        ),
        "ix_jobs_tenant_state_created_at_id",
    ),
    "list_jobs_args_contains_range": (
        lambda c: queries.list_jobs(
            c,
            "tenant-0",
            args_contains="no job says this",
            created_after=NOW - 10 * DAY,
            created_before=NOW - 10 * DAY + seconds(4 * 3600),
            limit=LIMIT,
        ),
        "ix_jobs_tenant_created",
    ),
}


@pytest.mark.parametrize("name", sorted(RANGED))
def test_a_time_range_bounds_the_index_walk(ledger: sa.Engine, name: str) -> None:
    """Fails if either end of the range is left out or applied as a filter after the walk (the
    Index Cond lacks it), if another index serves it, or if the walk reads past the range (the
    args text over a range whose end is dropped walks the rest of tenant-0's history)."""
    call, index = RANGED[name]
    with ledger.connect() as conn, conn.begin():
        nodes = explain(conn, call)
    assert_bounded(nodes, index)
    (scan,) = [n for n in nodes if n.get("Index Name") == index]
    cond = scan.get("Index Cond", "")
    assert "created_at >=" in cond and "created_at <" in cond, (cond, nodes)
    if name == "list_jobs_args_contains_range":  # the text is checked on the range's rows, by the
        (heap,) = [n for n in nodes if n.get("Relation Name") == "jobs"]  # index or the bitmap heap scan
        assert "~~*" in heap.get("Filter", ""), heap
        assert heap["Actual Rows"] == 0 and heap["Rows Removed by Filter"] > LIMIT, heap
    else:
        assert 0 < scan["Actual Rows"] < LIMIT, scan  # the window holds fewer rows than a page
    print(f"\n{name}: {index}, {rows_read(nodes)} rows over {len(nodes)} nodes")


def test_a_missing_quota_index_is_seen_in_the_rows_read(ledger: sa.Engine) -> None:
    """The count covers bitmap scans: without the quota index the planner answers tenant_queued
    with a Bitmap Index Scan of every queued job, which names no table, then a Bitmap Heap Scan
    that stops at the LIMIT; only the index scan's rows show the 4,000 entries read."""
    call, _ = CASES["tenant_queued"]
    index = "ix_jobs_tenant_state_created_at_id"
    with ledger.connect() as conn, conn.begin() as tx:
        conn.exec_driver_sql(f"DROP INDEX {index}")
        nodes = explain(conn, call)
        tx.rollback()
    assert index not in indexes_used(nodes), nodes
    assert rows_read(nodes) > MAX_READ, (rows_read(nodes), nodes)


def test_overdue_finds_what_is_late_and_nothing_else(ledger: sa.Engine) -> None:
    """The deadline is computed in SQL: a 60 s job started 2 h ago is late, a 3600 s job 10 min ago is not."""
    with ledger.connect() as conn:
        late = queries.overdue(conn, NOW, 10.0, 10_000)
        running = conn.execute(sa.text("SELECT started_at, timeout_s FROM jobs WHERE state = 'running'")).all()
    expected = sum(1 for started, timeout in running if started + seconds(timeout + 10.0) < NOW)
    assert 0 < len(late) == expected < len(running)


def test_overdue_on_both_backends(engine: sa.Engine, new_job: Callable[..., Any]) -> None:
    """SQLite has no interval type: the deadline there is computed with julianday()."""
    now = utcnow()
    late = new_job(timeout_s=60.0, tenant="overdue-late")
    on_time = new_job(timeout_s=3600.0, tenant="overdue-on-time")
    queued = new_job(timeout_s=1.0, tenant="overdue-queued")
    with engine.begin() as conn:
        for job, started in ((late, now - seconds(75)), (on_time, now - seconds(75))):
            conn.execute(sa.update(jobs).where(jobs.c.id == job.id).values(state="running", started_at=started))
        conn.execute(sa.update(jobs).where(jobs.c.id == queued.id).values(started_at=now - seconds(75)))
    with engine.connect() as conn:
        found = {r.id for r in queries.overdue(conn, now, 10.0, 1000)}
        assert late.id in found and on_time.id not in found and queued.id not in found
        assert late.id not in {r.id for r in queries.overdue(conn, now, 20.0, 1000)}, "grace counts"


# Reads over every queued (or live) job by design: a count or a minimum per queue. They cannot stop
# at a LIMIT, so the bound is different: the index alone answers them (no heap fetch per job, no
# sequential scan), on the covering (state, queue, created_at, not_before) index (migration 0005).
COVERED: dict[str, Callable[[Connection], object]] = {
    "oldest_queued_by_queue": queries.oldest_queued_by_queue,
    "live_counts_by_queue": queries.live_counts_by_queue,
    "live_counts": lambda c: queries.live_counts(c, "q-1"),
}


@pytest.mark.parametrize("name", sorted(COVERED))
def test_the_per_queue_reads_are_index_only(ledger: sa.Engine, name: str) -> None:
    """Fails if oldest_queued_by_queue reads the heap for each queued job (on the old (state, queue)
    index it fetched all 4,000 here: 38 ms for 10,000 queued in a ledger of 1M), or if a live count
    stops being an index-only scan of the covering index."""
    with ledger.connect() as conn, conn.begin():
        nodes = explain(conn, COVERED[name])
    scans = [n for n in nodes if n.get("Relation Name") == "jobs"]
    assert scans, nodes
    assert [n["Node Type"] for n in scans] == ["Index Only Scan"] * len(scans), nodes
    assert {n["Index Name"] for n in scans} == {"ix_jobs_state_queue_created_at_not_before"}, nodes
    assert sum(n.get("Heap Fetches", 0) for n in scans) == 0, nodes


def test_oldest_queued_counts_not_before(ledger: sa.Engine) -> None:
    """The covered read keeps the meaning: a job due later (not_before) is ready at not_before, so
    putting off q-0's oldest job makes the next one q-0's oldest (a read of min(created_at) alone,
    which the index would also serve, would still name the first)."""
    ready = "GREATEST(created_at, not_before)"
    with ledger.connect() as conn, conn.begin() as tx:
        first, second = conn.execute(
            sa.text(f"SELECT id, {ready} FROM jobs WHERE state = 'queued' AND queue = 'q-0' ORDER BY 2 LIMIT 2")
        ).all()
        assert queries.oldest_queued_by_queue(conn)["q-0"] == first[1]
        conn.execute(sa.text("UPDATE jobs SET not_before = now() + interval '1 day' WHERE id = :id"), {"id": first[0]})
        assert queries.oldest_queued_by_queue(conn)["q-0"] == second[1]
        tx.rollback()
