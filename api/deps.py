"""Request dependencies: the caller's API key, checked against the ledger and cached briefly."""

from __future__ import annotations

import collections
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header, Request
from starlette.concurrency import run_in_threadpool

from worker.clock import utcnow
from worker.errors import ForbiddenError, MedicError, UnauthorizedError
from worker.ledger import apikeys, db, sessions
from worker.ledger.apikeys import ApiKey, Scope
from worker.ledger.sessions import Session
from worker.settings import get_settings


class KeyCache:
    """What the ledger said about a key, for `api_key_cache_seconds`: the key, or that there is
    none (an unknown key costs one ledger read per process per period, not one per request).
    Bounded, least recently used first out, so a stream of made-up keys cannot grow it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: collections.OrderedDict[str, tuple[ApiKey | None, float]] = collections.OrderedDict()

    def get(self, digest: str) -> tuple[bool, ApiKey | None]:
        """(known, key): known is False when the ledger must be asked."""
        hit = self._entries.get(digest)
        if hit is None or hit[1] <= time.monotonic():
            return False, None
        self._entries.move_to_end(digest)
        return True, hit[0]

    def put(self, digest: str, key: ApiKey | None) -> None:
        self._entries[digest] = (key, time.monotonic() + get_settings().api_key_cache_seconds)
        self._entries.move_to_end(digest)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def forget(self, key_id: uuid.UUID) -> None:
        """Drop a key seen revoked, so its next use reads the ledger (a scan: revocations are rare)."""
        for digest in [d for d, (key, _) in self._entries.items() if key is not None and key.id == key_id]:
            del self._entries[digest]


CACHE = KeyCache(size=10_000)


def find_key(raw: str) -> ApiKey | None:
    """The key from the cache, else from the ledger (a blocking read: call it in a thread). A
    string that is not shaped like a key is refused without a read."""
    if not apikeys.well_formed(raw):
        return None
    digest = apikeys.hash_key(raw)
    known, key = CACHE.get(digest)
    if known:
        return key
    with db.connect() as conn:
        key = apikeys.lookup(conn, raw)
    CACHE.put(digest, key)
    return key


async def authenticate(authorization: str | None) -> ApiKey:
    """The key an `Authorization` header names. Async, so a cached key costs no hop to the
    threadpool; only a cache miss reads the ledger in a worker thread.

    Raises:
        UnauthorizedError: no Bearer key, or one the ledger does not know.
    """
    if not authorization or not authorization.lower().startswith("bearer "):
        raise UnauthorizedError("missing API key: send 'Authorization: Bearer <key>'")
    raw = authorization[7:].strip()
    known, key = CACHE.get(apikeys.hash_key(raw)) if apikeys.well_formed(raw) else (True, None)
    if not known:
        key = await run_in_threadpool(find_key, raw)
    if key is None:
        raise UnauthorizedError("invalid or revoked API key")
    return key


AUTHENTICATED = "medic.api_key"
"""Where `AuthBeforeBody` (api/limits.py) leaves, in the request's scope, the key it checked
before the body was read, or the error that refused it."""


async def current_key(request: Request, authorization: Annotated[str | None, Header()] = None) -> ApiKey:
    """The caller's key: the outcome of the check made before the body was read, if one was,
    else checked now.

    Raises:
        UnauthorizedError: no Bearer key, or one the ledger does not know.
        LedgerUnavailableError: a key not cached, and the ledger cannot answer.
    """
    checked = request.scope.get(AUTHENTICATED)
    if isinstance(checked, ApiKey):
        return checked
    if isinstance(checked, MedicError):
        raise checked
    return await authenticate(authorization)


def allowed(key: ApiKey, scope: Scope) -> ApiKey:
    """`key`, if it has `scope` (admin has every scope): the one check of the API and the console.

    Raises:
        ForbiddenError: it does not.
    """
    if not key.allows(scope):
        raise ForbiddenError(f"this key lacks the '{scope.value}' scope")
    return key


def require(scope: Scope) -> Callable[[ApiKey], Awaitable[ApiKey]]:
    async def check(key: Annotated[ApiKey, Depends(current_key)]) -> ApiKey:
        return allowed(key, scope)

    return check


SubmitKey = Annotated[ApiKey, Depends(require(Scope.SUBMIT))]
ReadKey = Annotated[ApiKey, Depends(require(Scope.READ))]
AdminKey = Annotated[ApiKey, Depends(require(Scope.ADMIN))]


def tenant_for(key: ApiKey, asked: str | None) -> str:
    """The tenant a request reads or acts on: the key's own, or, for an admin key only, the one
    it names (`tenant=`). The one rule for the API and the console alike.

    Raises:
        ForbiddenError: a key without the admin scope naming another tenant.
    """
    if not asked or asked == key.tenant:
        return key.tenant
    if Scope.ADMIN not in key.scopes:
        raise ForbiddenError("only an admin key may name another tenant")
    return asked


SESSION_COOKIE = "medic_session"
"""The console's session cookie (api/console/session.py); the job stream accepts it too, so the
console's job page follows its job without the key ever reaching the page's script."""


def find_session(token: str) -> Session | None:
    """The live console session a cookie names (a blocking read: call it in a thread)."""
    if not token:
        return None
    with db.connect() as conn:
        return sessions.find_session(conn, token, now=utcnow())
