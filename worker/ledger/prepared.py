"""Server-side prepared statements: the hot statements run as an EXECUTE of a PREPARE made once
per connection.

The hot statements are CTEs over a 25-column table: PostgreSQL spends more CPU parsing and
planning them than running them (docs/benchmarks.md). A connection's prepared statements die with
it, so a replaced or recycled connection simply prepares again (`Connection.info` is per DBAPI
connection). Behind a pooler in transaction mode a connection's PREPARE may be on another server
session: the first sign of that turns preparing off for the process (`execute_prepared`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import re
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Dialect, Result

from worker.settings import get_settings

log = logging.getLogger(__name__)

_PREPARED_KEY = "medic_prepared"
_PYFORMAT = re.compile(r"%\((\w+)\)s")


@dataclasses.dataclass(frozen=True)
class Prepared:
    """One statement as a PREPARE (run once per connection) and the EXECUTE that calls it; the
    EXECUTE keeps the statement's bind and result types, so rows come back as from `execute`."""

    name: str
    prepare: str
    call: sa.TextClause
    fixed: Mapping[str, Any]  # literal values compiled into the statement (states, reasons)


@functools.lru_cache(maxsize=64)
def _prepared(stmt: sa.Executable, dialect: Dialect) -> Prepared | None:
    compiled = stmt.compile(dialect=dialect)  # type: ignore[attr-defined]
    if dialect.paramstyle != "pyformat":
        return None
    names: list[str] = []

    def number(m: re.Match[str]) -> str:
        if m.group(1) not in names:
            names.append(m.group(1))
        return f"${names.index(m.group(1)) + 1}"

    if "%%" in compiled.string:  # a literal % would need unescaping: not worth it, run it plainly
        return None
    body = _PYFORMAT.sub(number, compiled.string)
    name = "medic_" + hashlib.sha1(body.encode()).hexdigest()[:16]
    binds = dict(compiled.binds)
    args = ", ".join(f":{n}" for n in names)
    call = sa.text(f"EXECUTE {name}({args})").bindparams(*(sa.bindparam(n, type_=binds[n].type) for n in names))
    columns = [c for c in getattr(stmt, "selected_columns", ())]
    if columns:
        call = call.columns(*columns)  # type: ignore[assignment]
    fixed = {k: b.value for k, b in binds.items() if b.value is not None}
    return Prepared(name, f"PREPARE {name} AS {body}", call, fixed)


# SQLSTATEs of a server whose prepared statements are not the ones this connection made: a
# pooler in transaction mode (PgBouncer) hands each transaction to another server connection.
_NOT_PREPARED_HERE = {"26000", "42P05"}  # invalid_sql_statement_name, duplicate_prepared_statement
_pooler_seen = False


def execute_prepared(conn: Connection, stmt: sa.Executable, params: Mapping[str, Any]) -> Result[Any]:
    """`conn.execute(stmt, params)`, as an EXECUTE of a statement prepared on this connection.

    If the server turns out not to hold what this connection prepared (a pooler in transaction
    mode), this process stops preparing, logs how to configure it, and runs the statement plainly
    when it can (autocommit: the failed statement aborted nothing); inside a transaction the error
    is raised, and the next try runs plainly."""
    global _pooler_seen
    use = get_settings().db_prepared_statements and not _pooler_seen
    prepared = _prepared(stmt, conn.dialect) if use else None
    if prepared is None:
        return conn.execute(stmt, params)
    done: set[str] = conn.info.setdefault(_PREPARED_KEY, set())
    try:
        if prepared.name not in done:
            conn.exec_driver_sql(prepared.prepare)
            done.add(prepared.name)
        return conn.execute(prepared.call, {**prepared.fixed, **params})
    except sa_exc.DBAPIError as exc:  # psycopg2 raises 26000 as an OperationalError, 42P05 as a ProgrammingError
        code = getattr(exc.orig, "pgcode", None)
        if code not in _NOT_PREPARED_HERE:
            raise
        _pooler_seen = True
        log.error(
            "the ledger lost a statement this connection prepared (%s): a pooler in transaction mode? "
            "this process now runs its statements unprepared; set MEDIC_DB_PREPARED_STATEMENTS=false",
            code,
        )
        if not getattr(conn.connection.dbapi_connection, "autocommit", False):
            raise
        return conn.execute(stmt, params)
