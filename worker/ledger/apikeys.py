"""API keys: stored as SHA-256 hashes (keys are random, 256 bits: no slow hash needed), each
bound to one tenant and a set of scopes."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from worker.clock import utcnow
from worker.errors import InvalidArgsError
from worker.ledger.models import api_keys

KEY_PREFIX = "mk_"


class Scope(StrEnum):
    SUBMIT = "submit"
    READ = "read"
    ADMIN = "admin"


@dataclass(frozen=True)
class ApiKey:
    id: uuid.UUID
    tenant: str
    scopes: frozenset[Scope]

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes or Scope.ADMIN in self.scopes


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


def create_key(conn: Connection, tenant: str, scopes: frozenset[Scope], name: str | None = None) -> str:
    """Store a new key and return it; this is the only time the raw key exists."""
    if not tenant or len(tenant) > 100:
        raise InvalidArgsError("tenant must be 1-100 characters")
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    conn.execute(
        api_keys.insert().values(
            id=uuid.uuid4(),
            key_hash=hash_key(raw),
            prefix=raw[:10],
            tenant=tenant,
            scopes=",".join(sorted(s.value for s in scopes)),
            name=name,
            created_at=utcnow(),
        )
    )
    return raw


def lookup(conn: Connection, raw: str) -> ApiKey | None:
    row = conn.execute(
        sa.select(api_keys).where(api_keys.c.key_hash == hash_key(raw), api_keys.c.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    return ApiKey(id=row.id, tenant=row.tenant, scopes=parse_scopes(row.scopes))


def revoke_key(conn: Connection, key_id: uuid.UUID) -> bool:
    """Revoke a key; False if it did not exist or was revoked already."""
    result = conn.execute(
        sa.update(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    return bool(result.rowcount)
