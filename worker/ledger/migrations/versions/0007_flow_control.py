"""Flow control: jobs the dispatcher starts, queue pause, rate buckets

- `jobs` gains `dispatch` (the dispatcher starts this job: it waits `held` in the ledger, not in
  the broker), `dispatch_rank` (its creation less priority x the aging step: the order held jobs
  start in), `flow_key` + `flow_limit` (keyed concurrency), `rate_key` + `rate_interval_s` (a
  rate limit), and partial indexes over held jobs and the slots a key or a queue holds.
- `queue_controls`: a queue's pause (durable) and the row whose lock orders its dispatches.
- `rate_buckets`: one GCRA bucket per rate key.

Additive only: code of 0006 runs against it (it writes no `held` job and reads columns by name).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None
oldest_compatible_code = "0006"

PARTIAL = {
    "ix_jobs_held_queue_tenant_rank": (["queue", "tenant", "dispatch_rank"], "state = 'held'"),
    "ix_jobs_held_flow_key_rank": (["flow_key", "dispatch_rank"], "state = 'held' AND flow_key IS NOT NULL"),
    "ix_jobs_held_rate_key_rank": (["rate_key", "dispatch_rank"], "state = 'held' AND rate_key IS NOT NULL"),
    "ix_jobs_live_flow_key": (["flow_key", "state"], "state IN ('queued', 'running') AND flow_key IS NOT NULL"),
    "ix_jobs_live_dispatch_queue_tenant": (["queue", "tenant", "state"], "state IN ('queued', 'running') AND dispatch"),
    "ix_jobs_live_rate_key": (["rate_key", "state"], "state = 'queued' AND rate_key IS NOT NULL"),
}


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("dispatch", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("dispatch_rank", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("flow_key", sa.String(400), nullable=True))
        batch.add_column(sa.Column("flow_limit", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("rate_key", sa.String(400), nullable=True))
        batch.add_column(sa.Column("rate_interval_s", sa.Float(), nullable=True))
    for name, (columns, where) in PARTIAL.items():
        op.create_index(
            name, "jobs", columns, postgresql_where=sa.text(where), sqlite_where=sa.text(where)
        )
    op.create_table(
        "queue_controls",
        sa.Column("queue", sa.String(200), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("refuse_while_paused", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("paused_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("paused_by", sa.String(255), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("queue", name="pk_queue_controls"),
    )
    op.create_table(
        "rate_buckets",
        sa.Column("key", sa.String(400), nullable=False),
        sa.Column("tat", sa.DateTime(timezone=True), nullable=False),
        sa.Column("interval_s", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_rate_buckets"),
    )


def downgrade() -> None:
    op.drop_table("rate_buckets")
    op.drop_table("queue_controls")
    for name in PARTIAL:
        op.drop_index(name, "jobs")
    with op.batch_alter_table("jobs") as batch:
        for column in ("rate_interval_s", "rate_key", "flow_limit", "flow_key", "dispatch_rank", "dispatch"):
            batch.drop_column(column)
