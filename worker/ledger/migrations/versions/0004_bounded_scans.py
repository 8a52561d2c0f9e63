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
    if op.get_bind().dialect.name == "postgresql":
        # CONCURRENTLY: building an index on a large ledger must not block the API's inserts for
        # minutes. It cannot run in a transaction; IF NOT EXISTS makes a re-run after a failure
        # (which leaves the revision unstamped) go on where it stopped.
        with op.get_context().autocommit_block():
            for name, columns in INDEXES.items():
                op.create_index(name, "jobs", columns, postgresql_concurrently=True, if_not_exists=True)
            op.drop_index("ix_jobs_tenant_state", "jobs", postgresql_concurrently=True, if_exists=True)
        return
    with op.batch_alter_table("jobs") as batch:
        for name, columns in INDEXES.items():
            batch.create_index(name, columns, unique=False)
        batch.drop_index("ix_jobs_tenant_state")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.create_index("ix_jobs_tenant_state", ["tenant", "state"], unique=False)
        for name in INDEXES:
            batch.drop_index(name)
