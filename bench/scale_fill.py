"""The scale bench's ledger: a fill grown in place, set-based (a million jobs in minutes, not
hours), and the few "problem" jobs each loop must find, put back before every timed run so every
run has the same work to do. The mix, by `i % 200`:

    0-1   queued     1 %   created in the last 2 minutes, published (re-stamped before timing)
    2     running    0.5 % started in the last 10 minutes, a lease 3 hours ahead (live-looking)
    3-6   dead       2 %   three attempts, 7 events
    7-8   cancelled  1 %   2 events
    else  succeeded  95.5 %  3 events

Finished jobs spread over the last 40 days (retention is 30: a quarter is prune's work); half the
jobs in `tenant-0`, the rest in seven others; four queues. Queue and tenant do not follow the
state (`i / 7`, `i / 3`): every queue has queued and running jobs.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from worker.broker import counters, redis_keys
from worker.broker.redis_client import get_redis
from worker.clock import utcnow
from worker.ledger import db

QUEUES = [f"bench-scale-{n}" for n in range(4)]
BIG_TENANT = "tenant-0"
SPREAD_DAYS = 40
CHUNK = 100_000
# stuck, overdue, unpublished and lost jobs: what the loops must find every run. Few: acting on a
# job costs a loop a few ms whatever the ledger's size; the bench is after what the size costs.
PROBLEMS_EACH = 5

# One statement per chunk: the jobs, and their events from what the INSERT returned.
FILL = """
WITH new AS (
  INSERT INTO jobs (id, type, queue, priority, tenant, args, result, error, state, attempts,
                    max_attempts, timeout_s, backoff_s, delivery_id, created_at, updated_at,
                    published_at, started_at, heartbeat_at, lease_expires_at, finished_at, worker,
                    worker_pid)
  SELECT gen_random_uuid(), 'examples.echo', 'bench-scale-' || ((i / 7) % 4), 0,
         CASE WHEN (i / 3) % 2 = 0 THEN 'tenant-0' ELSE 'tenant-' || (1 + (i / 3) % 7) END,
         '{"message": "a payload of a few dozen bytes, like a real job"}'::jsonb,
         CASE WHEN st = 'succeeded' THEN '{"message": "a payload of a few dozen bytes"}'::jsonb END,
         CASE WHEN st = 'dead' THEN '{"type": "RuntimeError", "message": "failed on purpose"}'::jsonb END,
         st, CASE st WHEN 'queued' THEN 0 WHEN 'dead' THEN 3 ELSE 1 END, 3,
         CASE WHEN st = 'running' THEN 3600 ELSE 60 END, 2, gen_random_uuid(), t, t,
         t,
         CASE WHEN st IN ('running', 'succeeded', 'dead') THEN t + interval '0.2 s' END,
         CASE WHEN st = 'running' THEN :now END,
         CASE WHEN st = 'running' THEN :now + interval '3 hours' END,
         CASE WHEN st IN ('succeeded', 'dead', 'cancelled') THEN t + interval '1 s' END,
         CASE WHEN st IN ('running', 'succeeded', 'dead') THEN 'bench-host' END,
         CASE WHEN st IN ('running', 'succeeded', 'dead') THEN 1000 + i % 8 END
  FROM (
    SELECT i, m,
           CASE WHEN m < 2 THEN 'queued' WHEN m = 2 THEN 'running' WHEN m < 7 THEN 'dead'
                WHEN m < 9 THEN 'cancelled' ELSE 'succeeded' END AS st,
           CASE WHEN m < 2 THEN :now - make_interval(secs => i % 120)
                WHEN m = 2 THEN :now - make_interval(secs => i % 600)
                ELSE :now - make_interval(secs => (i::bigint * 7919) % (:days * 86400)) END AS t
    FROM (SELECT i, i % 200 AS m FROM generate_series(:lo, :hi) AS i) AS s
  ) AS g
  RETURNING id, state, created_at
)
INSERT INTO job_events (job_id, at, from_state, to_state, actor, reason, attempt)
SELECT new.id, new.created_at + e.n * interval '0.1 s', e.from_state, e.to_state, e.actor, e.reason, e.attempt
FROM new JOIN (VALUES
  ('queued', 0, NULL, 'queued', 'api', 'enqueued', 0),
  ('running', 0, NULL, 'queued', 'api', 'enqueued', 0),
  ('running', 1, 'queued', 'running', 'worker', 'claimed', 1),
  ('succeeded', 0, NULL, 'queued', 'api', 'enqueued', 0),
  ('succeeded', 1, 'queued', 'running', 'worker', 'claimed', 1),
  ('succeeded', 2, 'running', 'succeeded', 'worker', 'ok', 1),
  ('cancelled', 0, NULL, 'queued', 'api', 'enqueued', 0),
  ('cancelled', 1, 'queued', 'cancelled', 'api', 'cancelled', 0),
  ('dead', 0, NULL, 'queued', 'api', 'enqueued', 0),
  ('dead', 1, 'queued', 'running', 'worker', 'claimed', 1),
  ('dead', 2, 'running', 'queued', 'worker', 'retry', 1),
  ('dead', 3, 'queued', 'running', 'worker', 'claimed', 2),
  ('dead', 4, 'running', 'queued', 'worker', 'retry', 2),
  ('dead', 5, 'queued', 'running', 'worker', 'claimed', 3),
  ('dead', 6, 'running', 'dead', 'worker', 'failed', 3)
) AS e (state, n, from_state, to_state, actor, reason, attempt) ON e.state = new.state
"""

# Queued jobs of the fill look freshly published whenever the loops are timed, so reconcile's
# lost-message rule (queued longer than MEDIC_LOST_AFTER_SECONDS) finds only the planted ones.
RESTAMP_QUEUED = """
UPDATE jobs SET published_at = now() - make_interval(secs => (hashtext(id::text) & 63)),
                created_at = now() - make_interval(secs => (hashtext(id::text) & 63))
WHERE state = 'queued' AND tenant <> 'problems'
"""


def grow(lo: int, hi: int) -> float:
    """Jobs number lo..hi (1-based, inclusive) and their events, in chunks; seconds it took."""
    now = utcnow()
    for start in range(lo, hi + 1, CHUNK):
        params = {"now": now, "lo": start, "hi": min(hi, start + CHUNK - 1), "days": SPREAD_DAYS}
        with db.begin() as conn:
            conn.execute(sa.text(FILL), params)
    return round((utcnow() - now).total_seconds(), 1)


def settle() -> float:
    """The fill's queued jobs re-stamped as just published, then VACUUM ANALYZE (what autovacuum
    would have done by then, and it clears the re-stamp's old row versions) and a CHECKPOINT, so
    the timed runs' commits do not wait behind the flush of the fill; seconds."""
    started = utcnow()
    with db.begin() as conn:
        conn.execute(sa.text(RESTAMP_QUEUED))
    with db.connect() as conn:
        autocommit = conn.execution_options(isolation_level="AUTOCOMMIT")
        autocommit.exec_driver_sql("VACUUM ANALYZE jobs, job_events")
        autocommit.exec_driver_sql("CHECKPOINT")
    return round((utcnow() - started).total_seconds(), 1)


def counts() -> dict[str, int]:
    """Jobs by state and events: what the ledger holds at this size."""
    with db.connect() as conn:
        by_state = {s: int(n) for s, n in conn.execute(sa.text("SELECT state, count(*) FROM jobs GROUP BY state"))}
        events = int(conn.scalar(sa.text("SELECT count(*) FROM job_events")) or 0)
    return {"jobs": sum(by_state.values()), **{f"jobs_{s}": n for s, n in sorted(by_state.items())}, "events": events}


def register_queues() -> None:
    """The queues the loops and GET /queues walk (enqueue adds a queue here on first use)."""
    counters.mark_active(QUEUES)


def between_runs(broker_prefix: str) -> None:
    """Every timed run starts alike: the messages a loop published (republished, requeued jobs)
    gone, so the broker's depth and reconcile's scan of it stay the same; autoscale's last
    decision forgotten, so it decides every queue again instead of waiting out its settle time."""
    r = get_redis()
    keys = [k for q in QUEUES for k in r.scan_iter(match=f"{broker_prefix}{q}*", count=1000)]
    keys += [redis_keys.scale(q) for q in QUEUES]
    r.delete(*keys)


# The jobs planted for the loops (tenant `problems`, the kind in args.message), put back in their
# problem state before every timed run; each loop must act on exactly its own.
PLANT = """
INSERT INTO jobs (id, type, queue, tenant, args, state, max_attempts, timeout_s, backoff_s, delivery_id,
                  created_at, updated_at)
SELECT gen_random_uuid(), 'examples.echo', 'bench-scale-0', 'problems', jsonb_build_object('message', kind),
       'queued', 3, 60, 2, gen_random_uuid(), now(), now()
FROM unnest(CAST(:kinds AS text[])) AS k (kind), generate_series(1, :each)
"""
PROBLEM_STATES = {
    # running, lease expired, worker gone: recover_stuck requeues them
    "stuck": "state = 'running', attempts = 1, started_at = now() - interval '1 minute',"
    " published_at = now() - interval '1 minute', lease_expires_at = now() - interval '30 seconds'",
    # running for 2 h with a 60 s timeout: enforce_timeouts times them out
    "overdue": "state = 'running', attempts = 1, started_at = now() - interval '2 hours',"
    " published_at = now() - interval '2 hours', lease_expires_at = now() + interval '3 hours'",
    # queued, the publish refused: reconcile re-sends them
    "unpublished": "state = 'queued', attempts = 0, started_at = NULL, lease_expires_at = NULL, published_at = NULL",
    # queued an hour ago, no message anywhere: reconcile re-sends them
    "lost": "state = 'queued', attempts = 0, started_at = NULL, lease_expires_at = NULL,"
    " published_at = now() - interval '1 hour'",
}
RESET_PROBLEM = """
UPDATE jobs SET {state}, delivery_id = gen_random_uuid(), created_at = now() - interval '2 hours',
                finished_at = NULL, not_before = NULL, heartbeat_at = NULL, worker = 'gone-host',
                worker_pid = 1, error = NULL
WHERE tenant = 'problems' AND args->>'message' = :kind
"""
EXPIRED = """
WITH expired AS (SELECT id FROM jobs WHERE state IN ('succeeded', 'dead', 'cancelled') AND finished_at < :cutoff)
SELECT (SELECT count(*) FROM expired), (SELECT count(*) FROM job_events WHERE job_id IN (SELECT id FROM expired))
"""


def plant_problems() -> None:
    with db.begin() as conn:
        conn.execute(sa.text(PLANT), {"kinds": list(PROBLEM_STATES), "each": PROBLEMS_EACH})
    reset_problems()


def reset_problems() -> None:
    """Every planted job back in its problem state, the events the loops added removed (so the
    lost ones never reach MEDIC_MAX_REDELIVERIES); one transaction."""
    with db.begin() as conn:
        conn.execute(sa.text("DELETE FROM job_events WHERE job_id IN (SELECT id FROM jobs WHERE tenant = 'problems')"))
        for kind, state in PROBLEM_STATES.items():
            conn.execute(sa.text(RESET_PROBLEM.format(state=state)), {"kind": kind})


def expired_count(now: dt.datetime, retention_days: float) -> dict[str, int]:
    """Jobs (and their events) prune should delete at `now`."""
    with db.connect() as conn:
        jobs, events = conn.execute(sa.text(EXPIRED), {"cutoff": now - dt.timedelta(days=retention_days)}).one()
    return {"jobs": jobs, "events": events}
