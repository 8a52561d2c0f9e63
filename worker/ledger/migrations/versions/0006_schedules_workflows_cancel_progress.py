"""What Celery users rely on, made durable: schedules, workflows, cancel requests, progress

- `jobs` gains `schedule_id` + `scheduled_for` (unique together: a fire is one row, however many
  beats or control workers race to make it), `workflow_id` + `step` (a workflow's step), and
  `cancel_requested_at` (a cancel a worker learns from its heartbeat, not only from a broadcast)
  and `progress` (the latest `{fraction, message, at}` a running job reported).
- `schedules` (one per tenant and name) and `schedule_events` (every change, audited; kept after
  the schedule is deleted).
- `workflows` and `workflow_steps` (a step's job, the names it waits for and how many of them
  have not succeeded yet: the release is a decrement in the transaction that finishes a step).

Additive only: code of 0005 runs against it (it selects the columns it knows by name).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB


revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None
oldest_compatible_code = "0005"

JSON = sa.JSON().with_variant(JSONB(), "postgresql")
BIGID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("schedule_id", sa.Uuid(), nullable=True))
        batch.add_column(sa.Column("scheduled_for", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("workflow_id", sa.Uuid(), nullable=True))
        batch.add_column(sa.Column("step", sa.String(200), nullable=True))
        batch.add_column(sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("progress", JSON, nullable=True))
        batch.create_unique_constraint("uq_jobs_schedule_id_scheduled_for", ["schedule_id", "scheduled_for"])
        batch.create_index("ix_jobs_tenant_schedule_id_created_at_id", ["tenant", "schedule_id", "created_at", "id"])
        batch.create_index("ix_jobs_tenant_workflow_id_created_at_id", ["tenant", "workflow_id", "created_at", "id"])
    op.create_table(
        "schedules",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant", sa.String(100), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("type", sa.String(200), nullable=False),
        sa.Column("args", JSON, nullable=False),
        sa.Column("queue", sa.String(200), nullable=True),
        sa.Column("every_seconds", sa.Float(), nullable=True),
        sa.Column("cron", sa.String(200), nullable=True),
        sa.Column("timezone", sa.String(64), nullable=False, server_default="UTC"),
        sa.Column("overlap", sa.String(20), nullable=False, server_default="skip"),
        sa.Column("catch_up_seconds", sa.Float(), nullable=True),
        sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("origin", sa.String(10), nullable=False, server_default="api"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_fire_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_fire_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_job_id", sa.Uuid(), nullable=True),
        sa.Column("fired", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("skipped", sa.BigInteger(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("id", name="pk_schedules"),
        sa.UniqueConstraint("tenant", "name", name="uq_schedules_tenant_name"),
    )
    op.create_index("ix_schedules_paused_next_fire_at", "schedules", ["paused", "next_fire_at"])
    op.create_table(
        "schedule_events",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("schedule_id", sa.Uuid(), nullable=False),
        sa.Column("tenant", sa.String(100), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("detail", JSON, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_schedule_events"),
    )
    op.create_index("ix_schedule_events_schedule_id_id", "schedule_events", ["schedule_id", "id"])
    op.create_table(
        "workflows",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant", sa.String(100), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("failure_policy", sa.String(20), nullable=False, server_default="fail_fast"),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_workflows"),
    )
    op.create_index("ix_workflows_tenant_created_at_id", "workflows", ["tenant", "created_at", "id"])
    op.create_index("ix_workflows_state_updated_at", "workflows", ["state", "updated_at"])
    op.create_table(
        "workflow_steps",
        sa.Column("workflow_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("after", JSON, nullable=False),
        sa.Column("pending", sa.Integer(), nullable=False),
        sa.Column("wants_results", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.ForeignKeyConstraint(
            ["workflow_id"], ["workflows.id"], name="fk_workflow_steps_workflow_id_workflows", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("workflow_id", "name", name="pk_workflow_steps"),
        sa.UniqueConstraint("job_id", name="uq_workflow_steps_job_id"),
    )


def downgrade() -> None:
    op.drop_table("workflow_steps")
    op.drop_index("ix_workflows_state_updated_at", "workflows")
    op.drop_index("ix_workflows_tenant_created_at_id", "workflows")
    op.drop_table("workflows")
    op.drop_index("ix_schedule_events_schedule_id_id", "schedule_events")
    op.drop_table("schedule_events")
    op.drop_index("ix_schedules_paused_next_fire_at", "schedules")
    op.drop_table("schedules")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_tenant_workflow_id_created_at_id")
        batch.drop_index("ix_jobs_tenant_schedule_id_created_at_id")
        batch.drop_constraint("uq_jobs_schedule_id_scheduled_for", type_="unique")
        for column in ("progress", "cancel_requested_at", "step", "workflow_id", "scheduled_for", "schedule_id"):
            batch.drop_column(column)
