"""The API, a worker and the live stream, all through PgBouncer in transaction mode.

Which tests, and why these: a transaction pooler breaks what lives in a server session between
transactions, and nothing else. So the subset is the tests that cross a transaction boundary on
one client connection or hold a transaction while others run, on real processes:

- submit over HTTP, run, retry and stream (`test_every_transition...`): the enqueue, claim and
  finalize writes (autocommit, `SET LOCAL` limits in front), the retry's back-off, the stream's
  REPEATABLE READ tail;
- the stream's hole race and a rolled-back id: a transaction held open through the pooler while
  other clients commit; the tail settles holes by `pg_current_snapshot()` xmin, which is the
  server's, not the session's;
- a batch (one multi-row statement), idempotency (a unique conflict answered on another server
  session than the insert) and the retry of a dead job (a read, then a write);
- the dispatcher through the API (keyed concurrency: `pg_advisory_xact_lock`), checked on the
  jobs' own run times;
- last, the servers' sessions are read: nothing any of it did stayed behind on them.

The stream tails `job_events` by polling (api/stream_hub.py), not LISTEN/NOTIFY, so it needs no
direct connection. The rest of tests/api (validation, auth, limits) never reaches the ledger
differently behind a pooler and is not run again here.
"""

from __future__ import annotations

import itertools

import httpx

from tests.api.test_jobs import (
    test_batch_enqueues_all_in_one_go,
    test_idempotency_key_returns_the_same_job,
    test_retry_a_dead_job,
)
from tests.api.test_stream import (
    tenant_key,
    test_a_rolled_back_id_does_not_stall_the_stream,
    test_an_id_committed_after_a_higher_one_is_not_skipped,
    test_every_transition_of_a_job_arrives_in_order,
)
from tests.api_client import wait_state
from tests.pgbouncer.conftest import POOL_SIZE, database_of, fresh_session_state, server_sessions
from worker.testing.pgbouncer import PrivatePgBouncer

__all__ = [
    "tenant_key",
    "test_a_rolled_back_id_does_not_stall_the_stream",
    "test_an_id_committed_after_a_higher_one_is_not_skipped",
    "test_batch_enqueues_all_in_one_go",
    "test_every_transition_of_a_job_arrives_in_order",
    "test_idempotency_key_returns_the_same_job",
    "test_retry_a_dead_job",
]


def test_keyed_jobs_submitted_over_http_never_overlap_within_their_key(client: httpx.Client) -> None:
    """Given examples.per_account (one job of an account at a time) and a worker of 2 children,
    When 3 jobs of each of 2 accounts are submitted at once,
    Then all succeed, an account's runs never overlap, and the two accounts did run side by side
    (so the dispatcher, not a single slot, kept them apart)."""
    body = {"jobs": [{"type": "examples.per_account", "args": {"account": a, "seconds": 0.4}} for a in "ab" * 3]}
    response = client.post("/jobs/batch", json=body)
    assert response.status_code == 202, response.text
    results = [wait_state(client, j["id"], timeout=60)["result"] for j in response.json()["jobs"]]
    runs = {a: sorted((r["started"], r["ended"]) for r in results if r["account"] == a) for a in "ab"}
    for account, spans in runs.items():
        for (_, ended), (started, _) in itertools.pairwise(spans):
            assert started >= ended, f"two jobs of account {account} ran at once: {spans}"
    assert any(sa < eb and sb < ea for sa, ea in runs["a"] for sb, eb in runs["b"]), "the accounts never overlapped"


def test_no_session_state_is_left_on_the_server_connections(
    medic_env: dict[str, str], bouncer: PrivatePgBouncer
) -> None:
    """After everything above, each server connection the pooler holds for this ledger is as a new
    session is: no SET without LOCAL (timeouts, synchronous_commit, isolation), no prepared
    statement, no LISTEN, no cursor, no temp table, no advisory lock. Any of those would follow
    the server connection to the next client's transaction."""
    database = database_of(medic_env)
    clients = [c for c in bouncer.admin("SHOW CLIENTS") if c["database"] == database]
    assert len(clients) > POOL_SIZE, "the stack's connections were not shared: fewer clients than servers"
    sessions = server_sessions(bouncer, database)
    assert len(sessions) == POOL_SIZE
    fresh = fresh_session_state(database)
    assert fresh["prepared_statements"] == 0 and fresh["advisory_locks"] == 0
    for pid, state in sessions.items():
        assert state == fresh, f"server connection {pid} carries session state"
