"""Request dependencies: the caller's API key, checked against the ledger and cached briefly."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Header

from worker.errors import ForbiddenError, UnauthorizedError
from worker.ledger import apikeys, db
from worker.ledger.apikeys import ApiKey, Scope
from worker.settings import get_settings

_cache: dict[str, tuple[ApiKey, float]] = {}


def _lookup(raw: str) -> ApiKey | None:
    digest = apikeys.hash_key(raw)
    hit = _cache.get(digest)
    if hit is not None and hit[1] > time.monotonic():
        return hit[0]
    with db.connect() as conn:
        key = apikeys.lookup(conn, raw)
    if key is not None:
        _cache[digest] = (key, time.monotonic() + get_settings().api_key_cache_seconds)
    return key


def clear_key_cache() -> None:
    _cache.clear()


def current_key(authorization: Annotated[str | None, Header()] = None) -> ApiKey:
    """Raises:
    UnauthorizedError: no Bearer key, or one the ledger does not know.
    """
    if not authorization or not authorization.lower().startswith("bearer "):
        raise UnauthorizedError("missing API key: send 'Authorization: Bearer <key>'")
    key = _lookup(authorization[7:].strip())
    if key is None:
        raise UnauthorizedError("invalid or revoked API key")
    return key


def require(scope: Scope) -> Callable[[ApiKey], ApiKey]:
    def check(key: Annotated[ApiKey, Depends(current_key)]) -> ApiKey:
        if not key.allows(scope):
            raise ForbiddenError(f"this key lacks the '{scope.value}' scope")
        return key

    return check


SubmitKey = Annotated[ApiKey, Depends(require(Scope.SUBMIT))]
ReadKey = Annotated[ApiKey, Depends(require(Scope.READ))]
AdminKey = Annotated[ApiKey, Depends(require(Scope.ADMIN))]
