"""The filters GET /jobs gained for the console (a time range, text in the args, another tenant
for admin keys), and the bulk retry (POST /jobs/retry, api/bulk.py) the console's "Retry all
matching" shares, bounded per request and recorded in the action log."""

from __future__ import annotations

import datetime as dt
import uuid

import httpx
import pytest
import sqlalchemy as sa

from api import bulk
from tests.conftest import KeyFactory
from tests.console.conftest import dead_jobs, state_of, submit
from worker.ledger import db
from worker.ledger.models import console_actions, jobs
from worker.ledger.queries import JobFilter

pytestmark = pytest.mark.timeout(120)


def _get(api: str, key: str, **params: str) -> httpx.Response:
    return httpx.get(f"{api}/jobs", params=params, headers={"Authorization": f"Bearer {key}"}, timeout=15)


def _ids(r: httpx.Response) -> set[str]:
    assert r.status_code == 200, r.text
    return {j["id"] for j in r.json()["jobs"]}


def test_args_contains_matches_text_in_any_case_and_escapes_wildcards(stack: str, make_key: KeyFactory) -> None:
    _, key = make_key()
    percent = submit(stack, key, "examples.echo", {"message": "Invoice 50% OFF"})
    other = submit(stack, key, "examples.echo", {"message": "invoice 50x off"})
    under = submit(stack, key, "examples.echo", {"message": "a_b"})
    axb = submit(stack, key, "examples.echo", {"message": "aXb"})
    assert _ids(_get(stack, key, args_contains="50% off")) == {percent}  # % is a character, not a wildcard
    assert _ids(_get(stack, key, args_contains="INVOICE")) == {percent, other}
    assert _ids(_get(stack, key, args_contains="a_b")) == {under}  # _ too
    assert axb not in _ids(_get(stack, key, args_contains="a_b"))


def test_a_time_range_bounds_created_at(stack: str, make_key: KeyFactory) -> None:
    tenant, key = make_key()
    ids = [submit(stack, key, "examples.echo", {"message": f"t{i}"}) for i in range(3)]
    with db.connect() as conn:
        created = dict(conn.execute(sa.select(jobs.c.id, jobs.c.created_at).where(jobs.c.tenant == tenant)).all())
    stamps = [created[uuid.UUID(i)] for i in ids]
    mid = stamps[1].isoformat()
    assert _ids(_get(stack, key, created_after=mid)) == {ids[1], ids[2]}  # inclusive
    assert _ids(_get(stack, key, created_before=mid)) == {ids[0]}  # exclusive
    naive = stamps[1].astimezone(dt.UTC).replace(tzinfo=None).isoformat()  # no zone: read as UTC
    assert _ids(_get(stack, key, created_after=naive)) == {ids[1], ids[2]}


@pytest.mark.parametrize("value", ["0.5", "1733400000", "yesterday"])
def test_a_time_that_is_not_iso_8601_is_a_422(stack: str, make_key: KeyFactory, value: str) -> None:
    _, key = make_key()
    assert _get(stack, key, created_before=value).status_code == 422
    r = httpx.post(
        f"{stack}/jobs/retry", json={"created_before": 0}, headers={"Authorization": f"Bearer {key}"}, timeout=15
    )
    assert r.status_code == 422


def test_only_an_admin_key_names_another_tenant(stack: str, make_key: KeyFactory) -> None:
    other, theirs = make_key("submit,read")
    _, reader = make_key("submit,read")
    _, admin = make_key("read,admin")
    job = submit(stack, theirs, "examples.echo", {"message": "x"})
    r = _get(stack, reader, tenant=other)
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    assert _ids(_get(stack, admin, tenant=other)) == {job}
    assert job not in _ids(_get(stack, admin))  # its own tenant by default
    r = httpx.post(f"{stack}/jobs/cancel", json={"tenant": other, "queue": "default"},
                   headers={"Authorization": f"Bearer {reader}"}, timeout=15)  # fmt: skip
    assert r.status_code == 403


def test_post_jobs_retry_runs_the_matching_dead_jobs_again(stack: str, make_key: KeyFactory) -> None:
    tenant, key = make_key()
    marker = uuid.uuid4().hex[:8]
    picked = dead_jobs(stack, key, 2, message=marker)
    [left] = dead_jobs(stack, key, 1, message="other")
    auth = {"Authorization": f"Bearer {key}"}
    r = httpx.post(f"{stack}/jobs/retry", json={"args_contains": marker}, headers=auth, timeout=15)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["retried"] == 2 and set(body["job_ids"]) == set(picked) and body["more"] is False
    assert state_of(stack, key, left) == "dead"
    with db.connect() as conn:
        [row] = conn.execute(sa.select(console_actions).where(console_actions.c.tenant == tenant)).all()
    assert row.action == "retry_matching" and row.actor.startswith("api:") and row.changed == 2
    # read and submit keys cannot (the retry of one job is admin-only too)
    _, plain = make_key("submit,read", tenant=tenant)
    r = httpx.post(f"{stack}/jobs/retry", json={}, headers={"Authorization": f"Bearer {plain}"}, timeout=15)
    assert r.status_code == 403


def test_a_bulk_retry_is_bounded_and_says_more(stack: str, make_key: KeyFactory) -> None:
    tenant, key = make_key()
    dead = dead_jobs(stack, key, 3)
    match = JobFilter(tenant, state="dead")
    first = bulk.retry_matching(match, actor="test", limit=2)
    assert (first.matched, first.changed, first.more) == (2, 2, True)
    assert set(first.job_ids) == {uuid.UUID(j) for j in dead[:2]}  # oldest first
    second = bulk.retry_matching(match, actor="test", limit=2)
    assert (second.matched, second.more) == (1, False) and second.job_ids == [uuid.UUID(dead[2])]
    with db.connect() as conn:
        logged = conn.execute(
            sa.select(console_actions.c.matched, console_actions.c.more)
            .where(console_actions.c.tenant == tenant)
            .order_by(console_actions.c.id)
        ).all()
    assert [tuple(r) for r in logged] == [(2, True), (1, False)]
