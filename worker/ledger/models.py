"""The ledger's tables. The `jobs` table is the source of truth; the broker only delivers."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(sa.TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone; we put it back)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger; use worker.clock.utcnow()")
        # in UTC on every backend; SQLite's DATETIME stores the fields and drops the zone itself
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value


JSONType: Any = sa.JSON().with_variant(JSONB(), "postgresql")


def _partial(name: str, where: str, *columns: str) -> sa.Index:
    """An index over the rows matching `where` only, the same on PostgreSQL and SQLite."""
    return sa.Index(name, *columns, postgresql_where=sa.text(where), sqlite_where=sa.text(where))


jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("type", sa.String(200), nullable=False),
    sa.Column("queue", sa.String(200), nullable=False),
    sa.Column("priority", sa.SmallInteger, nullable=False, server_default="0"),
    sa.Column("tenant", sa.String(100), nullable=False),
    sa.Column("idempotency_key", sa.String(200), nullable=True),
    sa.Column("args", JSONType, nullable=False),
    sa.Column("result", JSONType, nullable=True),
    sa.Column("error", JSONType, nullable=True),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("timeout_s", sa.Float, nullable=False),
    sa.Column("backoff_s", sa.Float, nullable=False),
    sa.Column("delivery_id", sa.Uuid, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("published_at", UTCDateTime, nullable=True),
    sa.Column("started_at", UTCDateTime, nullable=True),
    sa.Column("heartbeat_at", UTCDateTime, nullable=True),
    sa.Column("lease_expires_at", UTCDateTime, nullable=True),
    sa.Column("finished_at", UTCDateTime, nullable=True),
    sa.Column("not_before", UTCDateTime, nullable=True),
    sa.Column("worker", sa.String(255), nullable=True),
    sa.Column("worker_pid", sa.Integer, nullable=True),
    # a schedule's fire: one row per (schedule, time), however many beats race to make it
    sa.Column("schedule_id", sa.Uuid, nullable=True),
    sa.Column("scheduled_for", UTCDateTime, nullable=True),
    # a workflow's step (its name is unique in its workflow; workflow_steps holds the graph)
    sa.Column("workflow_id", sa.Uuid, nullable=True),
    sa.Column("step", sa.String(200), nullable=True),
    # a cancel asked of a running job: its worker reads it at each heartbeat (migration 0006)
    sa.Column("cancel_requested_at", UTCDateTime, nullable=True),
    # the latest {fraction, message, at} the running job reported
    sa.Column("progress", JSONType, nullable=True),
    # flow control (migration 0007): a job the dispatcher starts (worker/ledger/dispatch.py) waits
    # `held` in the ledger, in `dispatch_rank` order (its creation less priority x the aging step);
    # `flow_key` holds one of `flow_limit` slots from its dispatch to its end; `rate_key` names the
    # bucket (`rate_buckets`) a start takes a token of, one every `rate_interval_s`
    sa.Column("dispatch", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("dispatch_rank", UTCDateTime, nullable=True),
    sa.Column("flow_key", sa.String(400), nullable=True),
    sa.Column("flow_limit", sa.Integer, nullable=True),
    sa.Column("rate_key", sa.String(400), nullable=True),
    sa.Column("rate_interval_s", sa.Float, nullable=True),
    sa.UniqueConstraint("tenant", "idempotency_key"),
    sa.UniqueConstraint("schedule_id", "scheduled_for"),
    # listing a tenant's jobs newest first, keyset-paginated; filtered by state, type or queue, a
    # page is one index range read backwards with the LIMIT (tests/ledger/test_plans.py)
    sa.Index("ix_jobs_tenant_created", "tenant", "created_at", "id"),
    sa.Index("ix_jobs_tenant_state_created_at_id", "tenant", "state", "created_at", "id"),
    sa.Index("ix_jobs_tenant_type_created_at_id", "tenant", "type", "created_at", "id"),
    sa.Index("ix_jobs_tenant_queue_created_at_id", "tenant", "queue", "created_at", "id"),
    sa.Index("ix_jobs_tenant_schedule_id_created_at_id", "tenant", "schedule_id", "created_at", "id"),
    sa.Index("ix_jobs_tenant_workflow_id_created_at_id", "tenant", "workflow_id", "created_at", "id"),
    # control loops: running jobs by lease (recover) and by start (timeouts), queued jobs by queue,
    # queued jobs by publish time (reconcile), finished jobs by age (prune)
    sa.Index("ix_jobs_state_lease", "state", "lease_expires_at"),
    sa.Index("ix_jobs_state_started_at", "state", "started_at"),
    # queued jobs by queue covered with their ready times: the health loop's oldest-queued read is
    # index-only (migration 0005)
    sa.Index("ix_jobs_state_queue_created_at_not_before", "state", "queue", "created_at", "not_before"),
    sa.Index("ix_jobs_state_published_at_created_at", "state", "published_at", "created_at"),
    sa.Index("ix_jobs_finished", "finished_at"),
    # the dispatcher: held jobs of a queue in rank order, per tenant (fair share) and per key (a
    # freed slot) or rate bucket; the slots a key holds (its dispatched and running jobs); a
    # queue's window; a bucket's jobs sent ahead
    _partial("ix_jobs_held_queue_tenant_rank", "state = 'held'", "queue", "tenant", "dispatch_rank"),
    _partial("ix_jobs_held_flow_key_rank", "state = 'held' AND flow_key IS NOT NULL", "flow_key", "dispatch_rank"),
    _partial("ix_jobs_held_rate_key_rank", "state = 'held' AND rate_key IS NOT NULL", "rate_key", "dispatch_rank"),
    _partial("ix_jobs_live_flow_key", "state IN ('queued', 'running') AND flow_key IS NOT NULL", "flow_key", "state"),
    _partial(
        "ix_jobs_live_dispatch_queue_tenant", "state IN ('queued', 'running') AND dispatch", "queue", "tenant", "state"
    ),
    _partial("ix_jobs_live_rate_key", "state = 'queued' AND rate_key IS NOT NULL", "rate_key", "state"),
)

job_events = sa.Table(
    "job_events",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.Uuid, sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("from_state", sa.String(20), nullable=True),
    sa.Column("to_state", sa.String(20), nullable=False),
    sa.Column("actor", sa.String(255), nullable=False),
    sa.Column("reason", sa.String(100), nullable=False),
    sa.Column("delivery_id", sa.Uuid, nullable=True),
    sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
    sa.Column("detail", sa.Text, nullable=True),
    sa.Index("ix_job_events_job", "job_id", "id"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("tenant", sa.String(100), nullable=False),
    sa.Column("scopes", sa.String(100), nullable=False),
    sa.Column("name", sa.String(200), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime, nullable=True),
    # comma-separated queues the key may submit to; NULL: every declared queue
    sa.Column("queues", sa.Text, nullable=True),
)

console_sessions = sa.Table(
    "console_sessions",
    metadata,
    # the SHA-256 of the cookie's random token: a stolen table signs no one in
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("key_id", sa.Uuid, sa.ForeignKey("api_keys.id", ondelete="CASCADE"), nullable=False),
    sa.Column("csrf", sa.String(64), nullable=False),  # every state-changing form carries it
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Index("ix_console_sessions_expires_at", "expires_at"),
    sa.Index("ix_console_sessions_key_id", "key_id"),
)

console_actions = sa.Table(
    "console_actions",
    metadata,
    # the action log: one row per operator action (console or bulk API), worker/ledger/actions.py
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("actor", sa.String(255), nullable=False),
    sa.Column("tenant", sa.String(100), nullable=False),
    sa.Column("action", sa.String(40), nullable=False),
    sa.Column("target", JSONType, nullable=False),  # the filter, the job, the queue, the key...
    sa.Column("matched", sa.Integer, nullable=False),
    sa.Column("changed", sa.Integer, nullable=False),
    sa.Column("more", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("detail", JSONType, nullable=True),
    sa.Index("ix_console_actions_tenant_id", "tenant", "id"),
)

control_decisions = sa.Table(
    "control_decisions",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),  # admission | scale
    sa.Column("queue", sa.String(200), nullable=False),
    sa.Column("summary", sa.String(300), nullable=False),
    sa.Column("inputs", JSONType, nullable=False),
    sa.Index("ix_control_decisions_queue", "queue", "kind", "id"),
    sa.Index("ix_control_decisions_at", "at"),
)

control_state = sa.Table(
    "control_state",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

schedules = sa.Table(
    "schedules",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("tenant", sa.String(100), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("type", sa.String(200), nullable=False),
    sa.Column("args", JSONType, nullable=False),
    sa.Column("queue", sa.String(200), nullable=True),
    # exactly one of every_seconds and cron
    sa.Column("every_seconds", sa.Float, nullable=True),
    sa.Column("cron", sa.String(200), nullable=True),
    sa.Column("timezone", sa.String(64), nullable=False, server_default="UTC"),
    sa.Column("overlap", sa.String(20), nullable=False, server_default="skip"),  # skip | allow | cancel_previous
    sa.Column("catch_up_seconds", sa.Float, nullable=True),
    sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("origin", sa.String(10), nullable=False, server_default="api"),  # api | code
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # the earliest fire not made yet; the fire loop reads schedules by it
    sa.Column("next_fire_at", UTCDateTime, nullable=True),
    sa.Column("last_fire_at", UTCDateTime, nullable=True),
    sa.Column("last_job_id", sa.Uuid, nullable=True),
    sa.Column("fired", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("skipped", sa.BigInteger, nullable=False, server_default="0"),
    sa.UniqueConstraint("tenant", "name"),
    sa.Index("ix_schedules_paused_next_fire_at", "paused", "next_fire_at"),
)

schedule_events = sa.Table(
    "schedule_events",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    # no foreign key: the audit of a schedule outlives its deletion
    sa.Column("schedule_id", sa.Uuid, nullable=False),
    sa.Column("tenant", sa.String(100), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("actor", sa.String(255), nullable=False),
    sa.Column("action", sa.String(40), nullable=False),
    sa.Column("detail", JSONType, nullable=True),
    sa.Index("ix_schedule_events_schedule_id_id", "schedule_id", "id"),
)

workflows = sa.Table(
    "workflows",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("tenant", sa.String(100), nullable=False),
    sa.Column("name", sa.String(200), nullable=True),
    sa.Column("failure_policy", sa.String(20), nullable=False, server_default="fail_fast"),  # | continue
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("steps", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime, nullable=True),
    sa.Index("ix_workflows_tenant_created_at_id", "tenant", "created_at", "id"),
    sa.Index("ix_workflows_state_updated_at", "state", "updated_at"),
)

workflow_steps = sa.Table(
    "workflow_steps",
    metadata,
    sa.Column("workflow_id", sa.Uuid, sa.ForeignKey("workflows.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("job_id", sa.Uuid, nullable=False, unique=True),
    sa.Column("after", JSONType, nullable=False),  # the names of the steps it waits for
    # how many of those have not ended yet as its release needs (succeeded; any end under the
    # `continue` policy): 0 releases the step (waiting -> queued); worker/ledger/release.py
    sa.Column("pending", sa.Integer, nullable=False),
    sa.Column("wants_results", sa.Boolean, nullable=False, server_default=sa.false()),
)

queue_controls = sa.Table(
    "queue_controls",
    metadata,
    # one row per queue the dispatcher has seen or an operator paused; its row lock orders every
    # dispatch of the queue (worker/ledger/dispatch.py)
    sa.Column("queue", sa.String(200), primary_key=True),
    sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
    # while paused, whether admission refuses new jobs (429 queue_paused) or keeps them held
    sa.Column("refuse_while_paused", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("paused_at", UTCDateTime, nullable=True),
    sa.Column("paused_by", sa.String(255), nullable=True),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

rate_buckets = sa.Table(
    "rate_buckets",
    metadata,
    # GCRA: `tat` is the earliest time the next start may take a token (a start at `now` needs
    # `tat <= now` and moves it to now + interval), so starts are at least `interval` apart
    sa.Column("key", sa.String(400), primary_key=True),
    sa.Column("tat", UTCDateTime, nullable=False),
    sa.Column("interval_s", sa.Float, nullable=False),
)
