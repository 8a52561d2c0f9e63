"""Bounded scans: indexes for filtered job lists, timeouts and reconcile

A tenant's jobs filtered by state, type or queue; running jobs by start time; queued jobs by
publish time. (tenant, state) gives way to (tenant, state, created_at, id), which also serves
the queued-jobs quota.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 09:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# name -> columns; the names follow the models' naming convention (ix_<table>_<columns>)
INDEXES = {
    "ix_jobs_tenant_state_created_at_id": ["tenant", "state", "created_at", "id"],
    "ix_jobs_tenant_type_created_at_id": ["tenant", "type", "created_at", "id"],
    "ix_jobs_tenant_queue_created_at_id": ["tenant", "queue", "created_at", "id"],
    "ix_jobs_state_started_at": ["state", "started_at"],
    "ix_jobs_state_published_at_created_at": ["state", "published_at", "created_at"],
}


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for name, columns in INDEXES.items():
            batch.create_index(name, columns, unique=False)
        batch.drop_index("ix_jobs_tenant_state")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.create_index("ix_jobs_tenant_state", ["tenant", "state"], unique=False)
        for name in INDEXES:
            batch.drop_index(name)
