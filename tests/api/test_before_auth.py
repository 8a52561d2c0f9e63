"""What a caller without a valid key can make the API do: as little as possible. A string not
shaped like a key costs no ledger read, an unknown key one read per cache period, and a stream
client's first message is capped before it is parsed."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest

from api import deps
from tests.api.test_stream import closed_with, open_stream
from worker.ledger import apikeys


@pytest.fixture
def lookups(medic_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every ledger read of a key, in this process."""
    seen: list[str] = []
    real = apikeys.lookup

    def counting(conn: Any, raw: str) -> Any:
        seen.append(raw)
        return real(conn, raw)

    monkeypatch.setattr(apikeys, "lookup", counting)
    monkeypatch.setattr(deps, "CACHE", deps.KeyCache(size=100))
    return seen


def test_a_string_not_shaped_like_a_key_costs_no_ledger_read(lookups: list[str]) -> None:
    # Bug caught: every Authorization header, however malformed, a ledger query.
    for raw in ("mk_nope", "", "x" * 46, "mk_" + "!" * 43, apikeys.KEY_PREFIX + secrets.token_urlsafe(32) + "x"):
        assert deps.find_key(raw) is None
    assert lookups == []


def test_an_unknown_key_is_read_once_per_cache_period(lookups: list[str]) -> None:
    # Bug caught: unknown keys not cached: 64 requests in flight with made-up keys are 64 queries
    # and the pool is gone.
    made_up = apikeys.KEY_PREFIX + secrets.token_urlsafe(32)
    for _ in range(5):
        assert deps.find_key(made_up) is None
    assert lookups == [made_up]


def test_the_key_cache_is_bounded(medic_env: dict[str, str]) -> None:
    # Bug caught: a cache that grows with every made-up key a client sends.
    cache = deps.KeyCache(size=3)
    digests = [f"d{i}" for i in range(10)]
    for digest in digests:
        cache.put(digest, None)
    assert [cache.get(d)[0] for d in digests] == [False] * 7 + [True] * 3


def test_a_large_first_stream_message_is_refused_before_it_is_read(stack: str) -> None:
    # Bug caught: the key message read whole (16 MiB by default) and json-parsed on the event loop.
    with open_stream(stack, None) as ws:
        ws.send("{" + "x" * (1 << 20))
        assert closed_with(ws)[0] == 1009
    assert httpx.get(f"{stack}/health/live", timeout=10).status_code == 200
