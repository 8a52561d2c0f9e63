"""The console over HTTP, as a browser drives it, against the shared stack (real uvicorn, real
worker): sessions, CSRF, scopes, tenants, the bulk retry and cancel, the action log."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Callable

import httpx
import pytest
import sqlalchemy as sa

from tests.console.conftest import SignIn, csrf_of, dead_jobs, state_of, submit
from worker.ledger import db
from worker.ledger.models import console_actions, console_sessions, job_events
from worker.testing.processes import wait_for

pytestmark = pytest.mark.timeout(120)


def test_an_address_without_a_session_goes_to_sign_in_and_back(stack: str, make_key: object) -> None:
    r = httpx.get(f"{stack}/console/jobs?state=dead", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/console/sign-in?next=%2Fconsole%2Fjobs%3Fstate%3Ddead"
    page = httpx.get(f"{stack}{r.headers['location']}")
    assert page.status_code == 200
    assert '<label for="api_key">API key</label>' in page.text and ">Sign in</button>" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    # signing in there lands on the page first asked for
    _, key = make_key()  # type: ignore[operator]
    c = httpx.Client(base_url=stack, headers={"Origin": stack})
    r = c.post("/console/sign-in", data={"api_key": key, "next": "/console/jobs?state=dead"})
    assert r.status_code == 303 and r.headers["location"] == "/console/jobs?state=dead"
    c.close()


def test_the_session_cookie_is_httponly_strict_and_not_the_key(stack: str, make_key: object) -> None:
    _, key = make_key()  # type: ignore[operator]
    r = httpx.post(f"{stack}/console/sign-in", data={"api_key": key}, headers={"Origin": stack})
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("medic_session=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # MEDIC_CONSOLE_SECURE_COOKIE is off in the tests
    assert key not in cookie


@pytest.mark.parametrize(
    ("key", "status", "says"),
    [("mk_" + "x" * 43, 401, "unknown or revoked"), ("not a key", 401, "unknown or revoked")],
)
def test_a_wrong_key_signs_nobody_in(stack: str, key: str, status: int, says: str) -> None:
    r = httpx.post(f"{stack}/console/sign-in", data={"api_key": key}, headers={"Origin": stack})
    assert r.status_code == status and says in r.text
    assert "set-cookie" not in r.headers


def test_a_key_without_read_cannot_sign_in(stack: str, make_key: object) -> None:
    _, key = make_key("submit")  # type: ignore[operator]
    r = httpx.post(f"{stack}/console/sign-in", data={"api_key": key}, headers={"Origin": stack})
    assert r.status_code == 403 and "lacks the &#39;read&#39; scope" in r.text


def test_sign_in_goes_back_only_to_the_console(stack: str, make_key: object) -> None:
    _, key = make_key()  # type: ignore[operator]
    for target in ("https://evil.example/", "//evil.example/console", "/jobs"):
        r = httpx.post(f"{stack}/console/sign-in", data={"api_key": key, "next": target}, headers={"Origin": stack})
        assert r.headers["location"] == "/console", target


def test_a_sign_in_posted_from_another_site_is_refused(stack: str, make_key: object) -> None:
    _, key = make_key()  # type: ignore[operator]
    r = httpx.post(f"{stack}/console/sign-in", data={"api_key": key}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "set-cookie" not in r.headers


def test_another_tenants_job_is_invisible(stack: str, make_key: object, sign_in: SignIn) -> None:
    _, mine = make_key("submit,read")  # type: ignore[operator]
    _, theirs = make_key("submit,read")  # type: ignore[operator]
    my_job = submit(stack, mine, "examples.echo", {"message": "mine"})
    their_job = submit(stack, theirs, "examples.echo", {"message": "theirs"})
    c = sign_in(mine)
    listed = c.get("/console/jobs").text
    assert my_job[:8] in listed and their_job[:8] not in listed
    assert c.get(f"/console/jobs/{my_job}").status_code == 200
    r = c.get(f"/console/jobs/{their_job}")
    assert r.status_code == 404 and "no job" in r.text and their_job in r.text
    assert c.get(f"/console/jobs/{their_job}/args.json").status_code == 404
    # naming the other tenant takes an admin key
    r = c.get("/console/jobs", params={"tenant": "anyone-else"})
    assert r.status_code == 403 and "admin" in r.text


def test_an_admin_reads_another_tenant_by_name(stack: str, make_key: object, sign_in: SignIn) -> None:
    _, admin = make_key("read,admin")  # type: ignore[operator]
    other, theirs = make_key("submit,read")  # type: ignore[operator]
    job = submit(stack, theirs, "examples.echo", {"message": "visible to the operator"})
    c = sign_in(admin)
    assert job[:8] not in c.get("/console/jobs").text
    listed = c.get("/console/jobs", params={"tenant": other}).text
    assert job[:8] in listed and f"/console/jobs/{job}?tenant={other}" in listed
    assert "visible to the operator" in c.get(f"/console/jobs/{job}", params={"tenant": other}).text


def test_a_read_only_key_sees_no_buttons_and_its_posts_are_refused(
    stack: str, make_key: object, sign_in: SignIn
) -> None:
    tenant, full = make_key()  # type: ignore[operator]
    _, reader = make_key("read", tenant=tenant)  # type: ignore[operator]
    [dead] = dead_jobs(stack, full, 1)
    c = sign_in(reader)
    listed = c.get("/console/jobs", params={"state": "dead"}).text
    assert dead[:8] in listed
    assert "Retry all matching" not in listed and "Cancel all matching" not in listed
    page = c.get(f"/console/jobs/{dead}").text
    assert ">Retry</button>" not in page and ">Cancel</button>" not in page
    # its own valid CSRF token does not lend it a scope
    token = csrf_of(page)
    r = c.post("/console/jobs/bulk", data={"csrf": token, "action": "retry", "state": "dead"})
    assert r.status_code == 403 and "admin" in r.text
    r = c.post(f"/console/jobs/{dead}/retry", data={"csrf": token})
    assert r.status_code == 403
    assert state_of(stack, full, dead) == "dead"


def test_a_form_without_its_csrf_token_changes_nothing(stack: str, make_key: object, sign_in: SignIn) -> None:
    _, key = make_key()  # type: ignore[operator]
    [dead] = dead_jobs(stack, key, 1)
    c = sign_in(key)
    token = csrf_of(c.get("/console/jobs").text)
    forged = [
        ({"action": "retry", "state": "dead"}, {}),  # no token
        ({"action": "retry", "state": "dead", "csrf": "x" * 43}, {}),  # a wrong one
        ({"action": "retry", "state": "dead", "csrf": token}, {"Origin": "http://evil.example"}),  # another site
    ]
    for form, headers in forged:
        r = c.post("/console/jobs/bulk", data=form, headers=headers)
        assert r.status_code == 403, (form, headers, r.text)
    r = c.post(f"/console/jobs/{dead}/retry", data={})
    assert r.status_code == 403
    assert state_of(stack, key, dead) == "dead"
    with db.connect() as conn:
        events = conn.scalar(
            sa.select(sa.func.count()).where(
                job_events.c.job_id == uuid.UUID(dead), job_events.c.reason == "manual_retry"
            )
        )
    assert events == 0


def test_retry_all_matching_counts_confirms_and_logs(stack: str, make_key: object, sign_in: SignIn) -> None:
    tenant, key = make_key()  # type: ignore[operator]
    marker = uuid.uuid4().hex[:8]
    dead = dead_jobs(stack, key, 3, message=marker)
    [other] = dead_jobs(stack, key, 1, message="not this one")
    c = sign_in(key)
    listed = c.get("/console/jobs", params={"state": "dead", "args_contains": marker}).text
    assert all(j[:8] in listed for j in dead) and other[:8] not in listed
    confirm = c.get("/console/jobs/confirm", params={"action": "retry", "args_contains": marker})
    assert confirm.status_code == 200
    assert re.search(r"\b3\s+dead\s+jobs\s+match", confirm.text), confirm.text
    r = c.post("/console/jobs/bulk", data={"csrf": csrf_of(confirm.text), "action": "retry", "args_contains": marker})
    assert r.status_code == 303 and "done=retry%3A3%3A0" in r.headers["location"]
    # the three ran again (and failed again: examples.fail), the fourth was left alone
    for job in dead:
        wait_for(_retried_once(job), 30, 0.2, "manual_retry event")
    assert "manual_retry" not in _reasons(other)
    with db.connect() as conn:
        actors = set(
            conn.scalars(
                sa.select(job_events.c.actor).where(
                    job_events.c.reason == "manual_retry", job_events.c.job_id.in_([uuid.UUID(j) for j in dead])
                )
            )
        )
        [logged] = conn.execute(
            sa.select(console_actions).where(
                console_actions.c.tenant == tenant, console_actions.c.action == "retry_matching"
            )
        ).all()
    assert len(actors) == 1 and actors.pop().startswith("console:")
    assert logged.matched == 3 and logged.changed == 3 and not logged.more
    assert logged.target == {"args_contains": marker, "state": "dead"}
    assert "retry_matching" in c.get("/console/actions").text


def test_cancel_all_matching_cancels_only_what_matches(stack: str, make_key: object, sign_in: SignIn) -> None:
    _, key = make_key()  # type: ignore[operator]
    queue = f"q-console-{uuid.uuid4().hex[:6]}"  # nobody consumes it: the jobs stay queued
    mine = [submit(stack, key, "examples.echo", {"message": "cancel me"}, queue=queue) for _ in range(2)]
    keep = submit(stack, key, "examples.echo", {"message": "keep me"}, queue=queue)
    c = sign_in(key)
    confirm = c.get("/console/jobs/confirm", params={"action": "cancel", "queue": queue, "args_contains": "cancel me"})
    assert re.search(r"\b2\s+cancellable", confirm.text), confirm.text
    r = c.post(
        "/console/jobs/bulk",
        data={"csrf": csrf_of(confirm.text), "action": "cancel", "queue": queue, "args_contains": "cancel me"},
    )
    assert r.status_code == 303
    assert [state_of(stack, key, j) for j in mine] == ["cancelled", "cancelled"]
    assert state_of(stack, key, keep) == "queued"


def test_revoking_the_key_ends_its_sessions(stack: str, make_key: object, sign_in: SignIn) -> None:
    _, admin = make_key()  # type: ignore[operator]
    _, victim = make_key("read")  # type: ignore[operator]
    c = sign_in(victim)
    assert c.get("/console/jobs").status_code == 200
    a = sign_in(admin)
    keys_page = a.get("/console/keys").text
    [key_id] = re.findall(r"/console/keys/([0-9a-f-]{36})/revoke", keys_page.split(victim[:10])[1])[:1]
    assert a.post(f"/console/keys/{key_id}/revoke", data={"csrf": csrf_of(keys_page)}).status_code == 303
    r = c.get("/console/jobs")
    assert r.status_code == 303 and r.headers["location"].startswith("/console/sign-in")


def test_an_expired_session_signs_out(stack: str, make_key: object, sign_in: SignIn) -> None:
    _, key = make_key()  # type: ignore[operator]
    c = sign_in(key)
    assert c.get("/console").status_code == 200
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    digest = __import__("hashlib").sha256(c.cookies["medic_session"].encode()).hexdigest()
    with db.begin() as conn:
        conn.execute(sa.update(console_sessions).where(console_sessions.c.token_hash == digest).values(expires_at=past))
    assert c.get("/console").status_code == 303


def test_sign_out_ends_the_session_server_side(stack: str, make_key: object, sign_in: SignIn) -> None:
    _, key = make_key()  # type: ignore[operator]
    c = sign_in(key)
    token = c.cookies["medic_session"]
    assert c.post("/console/sign-out", data={"csrf": csrf_of(c.get("/console").text)}).status_code == 303
    stolen = httpx.get(f"{stack}/console", cookies={"medic_session": token}, follow_redirects=False)
    assert stolen.status_code == 303  # the old cookie, replayed, opens nothing


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("state=bogus", "state must be one of"),
        ("workflow_id=nope", "workflow_id must be a UUID"),
        ("created_after=yesterday", "created_after must be a time"),
        ("args_contains=" + "x" * 201, "at most 200"),
    ],
)
def test_a_bad_filter_is_a_422_page(stack: str, make_key: object, sign_in: SignIn, query: str, says: str) -> None:
    _, key = make_key()  # type: ignore[operator]
    r = sign_in(key).get(f"/console/jobs?{query}")
    assert r.status_code == 422 and says in r.text and r.headers["content-type"].startswith("text/html")


def _reasons(job_id: str) -> list[str]:
    with db.connect() as conn:
        return list(conn.scalars(sa.select(job_events.c.reason).where(job_events.c.job_id == uuid.UUID(job_id))))


def test_every_page_renders_for_an_admin(stack: str, make_key: object, sign_in: SignIn) -> None:
    """Each address of the console answers its page (a template that breaks is a 500 here)."""
    tenant, key = make_key()  # type: ignore[operator]
    job = submit(stack, key, "examples.echo", {"message": "pages"})
    steps = [
        {"name": "a", "type": "examples.echo", "args": {"message": "a"}},
        {"name": "b", "type": "examples.echo", "args": {"message": "b"}, "after": ["a"]},
    ]
    wf = httpx.post(
        f"{stack}/workflows", headers={"Authorization": f"Bearer {key}"}, json={"name": "wf-pages", "steps": steps}
    )
    assert wf.status_code == 202, wf.text
    sched = httpx.post(
        f"{stack}/schedules", headers={"Authorization": f"Bearer {key}"},
        json={"name": "nightly-pages", "type": "examples.echo", "args": {"message": "s"}, "cron": "0 3 * * *"},
    )  # fmt: skip
    assert sched.status_code == 201, sched.text
    c = sign_in(key)
    pages = {
        "/console": ["Alerts firing", "Queues", "Succeeded per minute"],
        "/console/jobs": [job[:8]],
        f"/console/jobs/{job}": ["examples.echo", "Timeline", "pages"],
        "/console/queues": ["default", "Pause default"],
        "/console/schedules": ["nightly-pages", "Trigger now", "cron <code>0 3 * * *</code>"],
        "/console/workflows": ["wf-pages"],
        f"/console/workflows/{wf.json()['id']}": ["after a", "Steps, in the order they can run"],
        "/console/keys": ["Create key", tenant],
        "/console/actions": ["Action log"],
    }
    for path, wanted in pages.items():
        r = c.get(path)
        assert r.status_code == 200, (path, r.text[:500])
        for text in wanted:
            assert text in r.text, (path, text)


def _retried_once(job_id: str) -> Callable[[], bool]:
    return lambda: _reasons(job_id).count("manual_retry") == 1


def test_the_job_stream_takes_the_session_cookie_from_its_own_origin_only(
    stack: str, make_key: object, sign_in: SignIn
) -> None:
    """The job page follows its job over WS /jobs/stream signed in by the cookie (its script
    never holds the key); a page of another origin cannot ride that cookie."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    _, key = make_key()  # type: ignore[operator]
    queue = f"q-console-{uuid.uuid4().hex[:6]}"
    job = submit(stack, key, "examples.echo", {"message": "streamed"}, queue=queue)
    cookie = f"medic_session={sign_in(key).cookies['medic_session']}"
    url = stack.replace("http://", "ws://") + f"/jobs/stream?job_id={job}"
    with connect(url, additional_headers={"Cookie": cookie, "Origin": stack}, open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "subscribed"
        httpx.post(f"{stack}/jobs/{job}/cancel", headers={"Authorization": f"Bearer {key}"}, timeout=15)
        # the job's own enqueue event may come first (the tail can reach it after the socket opened)
        seen: list[dict[str, str]] = []
        while len(seen) < 2 and (not seen or seen[-1]["to_state"] != "cancelled"):
            seen.append(json.loads(ws.recv(timeout=10)))
        assert {m["job_id"] for m in seen} == {job}
        assert [(m["from_state"], m["to_state"]) for m in seen][-1] == ("queued", "cancelled")
        assert all(m["from_state"] is None for m in seen[:-1])
    for origin, code in (("http://evil.example", 4403), (stack, 4401)):
        headers = {"Cookie": cookie if code == 4403 else "medic_session=forged", "Origin": origin}
        with connect(url, additional_headers=headers, open_timeout=10) as ws, pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == code, origin


def test_a_flower_task_id_leads_to_its_job_for_its_tenant_only(stack: str, make_key: object, sign_in: SignIn) -> None:
    _, key = make_key()  # type: ignore[operator]
    _, stranger = make_key()  # type: ignore[operator]
    job = submit(stack, key, "examples.fail", {"message": "twice"}, max_attempts=2)
    wait_for(lambda: state_of(stack, key, job) == "dead", 60, 0.2, "dead after 2 attempts")
    with db.connect() as conn:
        deliveries = list(
            conn.scalars(sa.select(job_events.c.delivery_id).where(job_events.c.job_id == uuid.UUID(job)).distinct())
        )
    assert len(deliveries) == 2  # each attempt had its own delivery
    c = sign_in(key)
    for delivery in deliveries:  # the current delivery and every earlier one
        for path in (f"/console/deliveries/{delivery}", f"/console/find?id={delivery}"):
            r = c.get(path, follow_redirects=True)
            assert r.status_code == 200 and str(r.url).endswith(f"/console/jobs/{job}"), path
    r = c.get(f"/console/find?id={job}")
    assert r.status_code == 303 and r.headers["location"] == f"/console/jobs/{job}"
    assert c.get("/console/find?id=not-an-id").status_code == 422
    other = sign_in(stranger)
    assert other.get(f"/console/deliveries/{deliveries[0]}").status_code == 404
