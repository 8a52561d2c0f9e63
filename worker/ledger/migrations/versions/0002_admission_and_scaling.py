"""admission and scaling: control_decisions, control_state, the tenant quota index

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 17:35:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "control_decisions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("queue", sa.String(length=200), nullable=False),
        sa.Column("summary", sa.String(length=300), nullable=False),
        sa.Column("inputs", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_control_decisions")),
    )
    with op.batch_alter_table("control_decisions", schema=None) as batch_op:
        batch_op.create_index("ix_control_decisions_queue", ["queue", "kind", "id"], unique=False)
        batch_op.create_index("ix_control_decisions_at", ["at"], unique=False)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_tenant_state", ["tenant", "state"], unique=False)
    op.create_table(
        "control_state",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_control_state")),
    )


def downgrade() -> None:
    op.drop_table("control_state")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_tenant_state")
    with op.batch_alter_table("control_decisions", schema=None) as batch_op:
        batch_op.drop_index("ix_control_decisions_at")
        batch_op.drop_index("ix_control_decisions_queue")
    op.drop_table("control_decisions")
