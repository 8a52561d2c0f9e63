"""A key revoked while its streams are open: they are closed with 4401 within
`api_key_cache_seconds` (the re-check's period, api/stream_keys.py), even though the key is in
the process's cache, and the key leaves the cache so a reconnect is refused."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import sqlalchemy as sa

from api import deps, stream_keys
from tests.api.test_stream import closed_with, open_stream, subscribed
from tests.conftest import KeyFactory
from worker.ledger import apikeys, db
from worker.ledger.models import api_keys


def revoke(raw: str) -> uuid.UUID:
    with db.begin() as conn:
        key_id = conn.scalar(sa.select(api_keys.c.id).where(api_keys.c.key_hash == apikeys.hash_key(raw)))
        assert key_id is not None and apikeys.revoke_key(conn, key_id)
    return key_id


def test_a_key_revoked_while_its_stream_is_open_closes_it_with_4401(stack: str, make_key: KeyFactory) -> None:
    # Bug caught: the key was checked once, at connect: a revoked key kept its stream for ever.
    _, key = make_key()
    _, other = make_key()
    with open_stream(stack, key) as ws, open_stream(stack, other) as bystander:
        subscribed(ws)
        subscribed(bystander)
        revoke(key)
        revoked_at = time.monotonic()
        # the bound is api_key_cache_seconds (1 s in the fast profile) plus a ledger read; the
        # wait below is only a generous ceiling
        assert closed_with(ws) == (4401, "API key revoked")
        closed_after = time.monotonic() - revoked_at
        with pytest.raises(TimeoutError):  # another key's stream stays open
            bystander.recv(timeout=2 * stream_keys.MIN_PERIOD_S + 0.5)
    with open_stream(stack, key) as again:  # and the revoked key cannot open a new one
        assert closed_with(again) == (4401, "invalid or revoked API key")
    print(f"stream closed {closed_after:.2f} s after the revocation")


def test_the_recheck_reads_the_ledger_not_the_cache_and_drops_a_revoked_key(
    medic_env: dict[str, str], make_key: KeyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Bug caught: a re-check through find_key sees the cached key until its entry expires, and a
    # revoked key left in the cache lets the client's reconnect straight back in.
    monkeypatch.setattr(deps, "CACHE", deps.KeyCache(size=100))
    _, raw = make_key()
    _, kept_raw = make_key()
    key, kept = deps.find_key(raw), deps.find_key(kept_raw)  # both cached now
    assert key is not None and kept is not None
    revoke(raw)
    assert deps.find_key(raw) == key  # the cache still trusts it: what the re-check must not rely on

    async def check() -> tuple[set[uuid.UUID], bool, bool]:
        watch = stream_keys.KeyWatch()
        gone, stays = watch.watch(key.id), watch.watch(kept.id)
        try:
            return await watch.check_once(), gone.is_set(), stays.is_set()
        finally:
            await watch.stop()

    assert asyncio.run(check()) == ({key.id}, True, False)
    assert deps.CACHE.get(apikeys.hash_key(raw)) == (False, None)  # next use reads the ledger
    assert deps.find_key(raw) is None
    assert deps.CACHE.get(apikeys.hash_key(kept_raw)) == (True, kept)
