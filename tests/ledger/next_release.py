"""A release one migration ahead of this code, played with a copy of the migrations plus one:
what an old pod (or a rollback image) finds after the new release has migrated."""

from __future__ import annotations

import shutil
from pathlib import Path

from worker.ledger.migrate import MIGRATIONS, head_revision

NEXT = "9001"

_MIGRATION = '''"""The next release's migration ({kind})."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "{next}"
down_revision = "{head}"
branch_labels = None
depends_on = None
{declaration}

def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("next_release_note", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("next_release_note")
'''


def next_release(where: Path, *, additive: bool) -> Path:
    """This code's migrations and one more: additive (declares the current head compatible), or a
    contract (declares nothing, so only code that knows it runs on it)."""
    target = where / "migrations"
    shutil.copytree(MIGRATIONS, target, ignore=shutil.ignore_patterns("__pycache__"))
    head = head_revision()
    declaration = f'oldest_compatible_code = "{head}"\n' if additive else ""
    text = _MIGRATION.format(kind="additive" if additive else "contract", next=NEXT, head=head, declaration=declaration)
    (target / "versions" / f"{NEXT}_next_release.py").write_text(text)
    return target
