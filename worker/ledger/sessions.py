"""Console sessions: a browser signed in with an API key.

The cookie carries a random 256-bit token; the ledger keeps only its SHA-256, the key it stands
for, a CSRF token and an expiry. Every read joins the key and requires it unrevoked, so revoking
a key ends its sessions at the next request, whatever the cookie says.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from worker.ledger.apikeys import ApiKey, parse_queues, parse_scopes
from worker.ledger.models import api_keys, console_sessions

TOKEN_BYTES = 32
_TOKEN_SHAPE = re.compile(rf"[A-Za-z0-9_-]{{{(TOKEN_BYTES * 4 + 2) // 3}}}")  # token_urlsafe's alphabet and length


@dataclass(frozen=True)
class Session:
    key: ApiKey
    csrf: str
    expires_at: dt.datetime


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(conn: Connection, key: ApiKey, *, now: dt.datetime, lifetime_s: float) -> tuple[str, Session]:
    """A new session for `key`: (the cookie's token, the session). Expired sessions of every key
    are dropped on the way (an index range: sign-ins are rare)."""
    conn.execute(sa.delete(console_sessions).where(console_sessions.c.expires_at <= now))
    token = secrets.token_urlsafe(TOKEN_BYTES)
    session = Session(
        key=key, csrf=secrets.token_urlsafe(TOKEN_BYTES), expires_at=now + dt.timedelta(seconds=lifetime_s)
    )
    conn.execute(
        console_sessions.insert().values(
            token_hash=_digest(token), key_id=key.id, csrf=session.csrf, created_at=now, expires_at=session.expires_at
        )
    )
    return token, session


def find_session(conn: Connection, token: str, *, now: dt.datetime) -> Session | None:
    """The live session a cookie names: not expired, its key not revoked; else None."""
    if _TOKEN_SHAPE.fullmatch(token) is None:  # not one we made: no ledger read for it
        return None
    row = conn.execute(
        sa.select(console_sessions.c.csrf, console_sessions.c.expires_at, api_keys)
        .join(api_keys, api_keys.c.id == console_sessions.c.key_id)
        .where(
            console_sessions.c.token_hash == _digest(token),
            console_sessions.c.expires_at > now,
            api_keys.c.revoked_at.is_(None),
        )
    ).first()
    if row is None:
        return None
    key = ApiKey(id=row.id, tenant=row.tenant, scopes=parse_scopes(row.scopes), queues=parse_queues(row.queues))
    return Session(key=key, csrf=row.csrf, expires_at=row.expires_at)


def close_session(conn: Connection, token: str) -> None:
    conn.execute(sa.delete(console_sessions).where(console_sessions.c.token_hash == _digest(token)))
