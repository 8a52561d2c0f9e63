"""Request dependencies: the caller's API key, checked against the ledger and cached briefly."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header
from starlette.concurrency import run_in_threadpool

from worker.errors import ForbiddenError, UnauthorizedError
from worker.ledger import apikeys, db
from worker.ledger.apikeys import ApiKey, Scope
from worker.settings import get_settings

_cache: dict[str, tuple[ApiKey, float]] = {}


def _cached(digest: str) -> ApiKey | None:
    hit = _cache.get(digest)
    return hit[0] if hit is not None and hit[1] > time.monotonic() else None


def find_key(raw: str) -> ApiKey | None:
    """The key from the cache, else from the ledger (a blocking read: call it in a thread)."""
    digest = apikeys.hash_key(raw)
    key = _cached(digest)
    if key is not None:
        return key
    with db.connect() as conn:
        key = apikeys.lookup(conn, raw)
    if key is not None:
        _cache[digest] = (key, time.monotonic() + get_settings().api_key_cache_seconds)
    return key


async def current_key(authorization: Annotated[str | None, Header()] = None) -> ApiKey:
    """Async, so a cached key costs no hop to the threadpool; only a cache miss reads the ledger
    in a worker thread.

    Raises:
        UnauthorizedError: no Bearer key, or one the ledger does not know.
    """
    if not authorization or not authorization.lower().startswith("bearer "):
        raise UnauthorizedError("missing API key: send 'Authorization: Bearer <key>'")
    raw = authorization[7:].strip()
    key = _cached(apikeys.hash_key(raw)) or await run_in_threadpool(find_key, raw)
    if key is None:
        raise UnauthorizedError("invalid or revoked API key")
    return key


def require(scope: Scope) -> Callable[[ApiKey], Awaitable[ApiKey]]:
    async def check(key: Annotated[ApiKey, Depends(current_key)]) -> ApiKey:
        if not key.allows(scope):
            raise ForbiddenError(f"this key lacks the '{scope.value}' scope")
        return key

    return check


SubmitKey = Annotated[ApiKey, Depends(require(Scope.SUBMIT))]
ReadKey = Annotated[ApiKey, Depends(require(Scope.READ))]
AdminKey = Annotated[ApiKey, Depends(require(Scope.ADMIN))]
