"""The console: sign-in sessions and the action log

- `console_sessions`: one row per browser signed in with an API key. The cookie carries a random
  token; only its SHA-256 is stored. A session ends when it expires, when its holder signs out,
  or when its key is revoked (every read joins the key and requires it unrevoked; deleting the
  key deletes its sessions).
- `console_actions`: the action log. One row per operator action taken through the console or a
  bulk route of the API (retry or cancel everything matching a filter, pause a queue, revoke a
  key...): who, when, on which tenant, with which filter, how many jobs matched and changed.

Additive only: code of 0007 runs against it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 04:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None
oldest_compatible_code = "0007"

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("key_id", sa.Uuid(), nullable=False),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"], ["api_keys.id"], name="fk_console_sessions_key_id_api_keys", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("token_hash", name="pk_console_sessions"),
    )
    op.create_index("ix_console_sessions_expires_at", "console_sessions", ["expires_at"])
    op.create_index("ix_console_sessions_key_id", "console_sessions", ["key_id"])
    op.create_table(
        "console_actions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("tenant", sa.String(100), nullable=False),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("target", JSON, nullable=False),
        sa.Column("matched", sa.Integer(), nullable=False),
        sa.Column("changed", sa.Integer(), nullable=False),
        sa.Column("more", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("detail", JSON, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_console_actions"),
    )
    op.create_index("ix_console_actions_tenant_id", "console_actions", ["tenant", "id"])


def downgrade() -> None:
    op.drop_table("console_actions")
    op.drop_table("console_sessions")
