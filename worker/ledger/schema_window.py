"""Which database schemas this code can run against: a window of migration revisions, not one.

A deploy migrates first and rolls pods after, and a rollback runs the previous image against the
schema the new one left. Requiring the database to sit exactly at the code's head made every old
pod unready the moment the migration ran, and a rollback image never ready. The window:

- from below, `OLDEST_SCHEMA`: the oldest revision whose schema this code needs (raised when the
  code starts to use what a migration added);
- from above, every revision this code knows, and a newer one it does not know when the database
  says this code still fits it: each migration declares `oldest_compatible_code`, the oldest code
  (named by its head revision) that still runs against the schema it leaves. An additive (expand)
  migration names its parent; one that drops or renames (contract) names itself. A migration
  that declares nothing counts as a contract. `medic db upgrade` records, in the same
  transaction as the migrations, the oldest code the resulting revision accepts
  (`control_state` row `schema_window`), because an older image cannot read the newer scripts.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from worker.ledger import dialect
from worker.ledger.models import control_state

OLDEST_SCHEMA = "0008"
STATE_KEY = "schema_window"
DECLARATION = "oldest_compatible_code"


def chain(scripts: ScriptDirectory) -> list[str]:
    """The revisions from the first to the head, in order (medic's migrations are one line)."""
    return [s.revision for s in reversed(list(scripts.walk_revisions()))]


def oldest_code_for(scripts: ScriptDirectory, revision: str) -> str:
    """The oldest code head that runs against `revision`: the latest of the declarations of
    every migration up to it (code that predates any one of them cannot run on the result)."""
    order = chain(scripts)
    oldest = order[0]
    for rev in order[: order.index(revision) + 1]:
        declared = getattr(scripts.get_revision(rev).module, DECLARATION, rev)
        if order.index(declared) > order.index(oldest):
            oldest = declared
    return oldest


def record(conn: Connection, scripts: ScriptDirectory, revision: str | None) -> None:
    """Remember what the database's revision accepts, for code that cannot read its script."""
    if revision is None or not sa.inspect(conn).has_table(control_state.name):
        return
    value = json.dumps({"revision": revision, "oldest_code": oldest_code_for(scripts, revision)})
    row = {"value": value, "updated_at": dt.datetime.now(dt.UTC)}
    conn.execute(dialect.of(conn).insert_on_conflict(control_state, {"name": STATE_KEY, **row}, ["name"], row))


@dataclass(frozen=True)
class Verdict:
    """Whether this code fits the database's schema, and why (details for logs and admins)."""

    ok: bool
    revision: str | None
    head: str
    reason: str

    def details(self) -> dict[str, Any]:
        return asdict(self)


def _recorded_oldest_code(conn: Connection, revision: str) -> str | None:
    raw = conn.scalar(sa.select(control_state.c.value).where(control_state.c.name == STATE_KEY))
    if raw is None:
        return None
    data = json.loads(raw)
    return str(data["oldest_code"]) if data.get("revision") == revision else None


def judge(conn: Connection, scripts: ScriptDirectory, revision: str | None) -> Verdict:
    """Does code whose migrations are `scripts` run against a database at `revision`?"""
    order = chain(scripts)
    head = order[-1]
    if revision is None:
        return Verdict(False, None, head, "the database has no schema: run `medic db upgrade`")
    if revision in order:
        fits = order.index(revision) >= order.index(OLDEST_SCHEMA)
        why = "known revision" if fits else f"older than {OLDEST_SCHEMA}, the oldest this code needs"
        return Verdict(fits, revision, head, why)
    oldest = _recorded_oldest_code(conn, revision)
    if oldest is None:
        return Verdict(False, revision, head, "a newer revision with no compatibility recorded")
    if oldest in order:
        return Verdict(True, revision, head, f"a newer revision that accepts code from {oldest}")
    return Verdict(False, revision, head, f"a newer revision that needs code from {oldest}")
