"""API keys: stored as SHA-256 hashes (keys are random, 256 bits: no slow hash needed), each
bound to one tenant, a set of scopes and, optionally, the queues it may submit to."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from worker.clock import utcnow
from worker.errors import InvalidArgsError
from worker.ledger.models import api_keys

KEY_PREFIX = "mk_"
SECRET_BYTES = 32
_KEY_SHAPE = re.compile(rf"{KEY_PREFIX}[A-Za-z0-9_-]{{{(SECRET_BYTES * 4 + 2) // 3}}}")  # token_urlsafe's length


class Scope(StrEnum):
    SUBMIT = "submit"
    READ = "read"
    ADMIN = "admin"


@dataclass(frozen=True)
class ApiKey:
    id: uuid.UUID
    tenant: str
    scopes: frozenset[Scope]
    queues: frozenset[str] | None = None  # None: every declared queue

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes or Scope.ADMIN in self.scopes


def well_formed(raw: str) -> bool:
    """Shaped like a key `create_key` makes: anything else is refused without a ledger read."""
    return _KEY_SHAPE.fullmatch(raw) is not None


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def parse_scopes(text: str) -> frozenset[Scope]:
    try:
        scopes = frozenset(Scope(part.strip()) for part in text.split(",") if part.strip())
    except ValueError:
        raise InvalidArgsError(f"scopes must be among {', '.join(s.value for s in Scope)}") from None
    if not scopes:
        raise InvalidArgsError("at least one scope is needed")
    return scopes


def parse_queues(text: str | None) -> frozenset[str] | None:
    """Comma-separated queue names -> a set; empty or None means "every declared queue"."""
    names = frozenset(part.strip() for part in (text or "").split(",") if part.strip())
    return names or None


def create_key(
    conn: Connection,
    tenant: str,
    scopes: frozenset[Scope],
    name: str | None = None,
    *,
    queues: frozenset[str] | None = None,
) -> str:
    """Store a new key and return it; this is the only time the raw key exists."""
    if not tenant or len(tenant) > 100:
        raise InvalidArgsError("tenant must be 1-100 characters")
    if queues is not None and not queues:
        raise InvalidArgsError("a key limited to queues needs at least one queue")
    raw = KEY_PREFIX + secrets.token_urlsafe(SECRET_BYTES)
    conn.execute(
        api_keys.insert().values(
            id=uuid.uuid4(),
            key_hash=hash_key(raw),
            prefix=raw[:10],
            tenant=tenant,
            scopes=",".join(sorted(s.value for s in scopes)),
            name=name,
            created_at=utcnow(),
            queues=",".join(sorted(queues)) if queues else None,
        )
    )
    return raw


def lookup(conn: Connection, raw: str) -> ApiKey | None:
    row = conn.execute(
        sa.select(api_keys).where(api_keys.c.key_hash == hash_key(raw), api_keys.c.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    return ApiKey(id=row.id, tenant=row.tenant, scopes=parse_scopes(row.scopes), queues=parse_queues(row.queues))


def live_ids(conn: Connection, ids: Collection[uuid.UUID]) -> set[uuid.UUID]:
    """Those of `ids` that still exist unrevoked: one primary-key read for every open stream's key."""
    if not ids:
        return set()
    query = sa.select(api_keys.c.id).where(api_keys.c.id.in_(list(ids)), api_keys.c.revoked_at.is_(None))
    return set(conn.scalars(query))


@dataclass(frozen=True)
class KeyInfo:
    """What `medic keys list` shows: everything but the key (only its hash is stored anyway)."""

    id: uuid.UUID
    prefix: str
    tenant: str
    scopes: str
    queues: str | None
    name: str | None
    created_at: dt.datetime
    revoked_at: dt.datetime | None


def list_keys(conn: Connection, *, tenant: str | None = None, include_revoked: bool = True) -> list[KeyInfo]:
    query = sa.select(
        api_keys.c.id, api_keys.c.prefix, api_keys.c.tenant, api_keys.c.scopes, api_keys.c.queues,
        api_keys.c.name, api_keys.c.created_at, api_keys.c.revoked_at,
    ).order_by(api_keys.c.created_at, api_keys.c.id)  # fmt: skip
    if tenant is not None:
        query = query.where(api_keys.c.tenant == tenant)
    if not include_revoked:
        query = query.where(api_keys.c.revoked_at.is_(None))
    return [KeyInfo(*row) for row in conn.execute(query)]


def revoke_key(conn: Connection, key_id: uuid.UUID) -> bool:
    """Revoke a key; False if it did not exist or was revoked already."""
    result = conn.execute(
        sa.update(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    return bool(result.rowcount)
