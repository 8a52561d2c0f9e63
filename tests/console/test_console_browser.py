"""The console in a real browser (Debian's Chromium, driven by Playwright) on the shared stack
(uvicorn + a worker on queue default): signing in by keyboard, a bulk retry confirmed by its
count, what a read-only key is shown and refused, another tenant's job out of sight, no request
outside the origin, a job page following its job live, signing out; and screenshots of every
page.

Screenshots go to the test's tmp dir, or to docs/img/ (which docs/console.md shows) with
MEDIC_SCREENSHOTS=docs/img.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.console.conftest import dead_jobs, state_of, submit
from worker.testing.processes import Processes, wait_for

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="chromium missing: apt-get install chromium (.ci/run does)"),
    pytest.mark.timeout(180),
    pytest.mark.slow,
]
playwright_sync = pytest.importorskip("playwright.sync_api")
expect = playwright_sync.expect
Page = playwright_sync.Page
Browser = playwright_sync.Browser
NOBODY = "nobody-consumes-this"  # a declared queue no worker takes: its jobs stay queued
WAIT_MS = 30_000


@pytest.fixture
def img(tmp_path: Path) -> Path:
    chosen = os.environ.get("MEDIC_SCREENSHOTS")
    return ROOT / chosen if chosen else tmp_path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with playwright_sync.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-quic"])
        yield b
        b.close()


OpenPage = Callable[..., Page]


@pytest.fixture
def new_page(browser: Browser) -> Iterator[OpenPage]:
    """new_page(width=1280, height=900) -> a page in a fresh context (its own cookies)."""
    contexts: list[playwright_sync.BrowserContext] = []

    def make(width: int = 1280, height: int = 900) -> Page:
        context = browser.new_context(viewport={"width": width, "height": height})
        context.set_default_timeout(WAIT_MS)
        contexts.append(context)
        return context.new_page()

    yield make
    for c in contexts:
        c.close()


def sign_in(page: Page, stack: str, key: str, path: str = "/console/jobs") -> None:
    """Open a console page, get sent to the sign-in page, type the key and press Enter."""
    page.goto(f"{stack}{path}")
    field = page.get_by_label("API key")
    expect(field).to_be_focused()  # autofocus: the keyboard alone signs in
    page.keyboard.type(key)
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{stack}{path}")
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def job_link(page: Page, job_id: str) -> playwright_sync.Locator:
    return page.get_by_role("link", name=job_id[:8], exact=True)


def test_admin_retries_all_matching_dead_jobs_by_keyboard_and_mouse(
    stack: str, make_key: Callable[..., tuple[str, str]], new_page: OpenPage, tmp_path: Path
) -> None:
    _, key = make_key()
    marker = tmp_path / "still-failing"
    marker.write_text("the job fails while this file exists")
    job = submit(stack, key, "tests.fails_while", {"marker": str(marker)}, max_attempts=1)
    wait_for(lambda: state_of(stack, key, job) == "dead", 60, 0.2, "the job dead")
    page = new_page()
    sign_in(page, stack, key)

    page.get_by_label("State").select_option("dead")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"/console/jobs\?state=dead$"))
    expect(job_link(page, job)).to_be_visible()

    # Without the page's CSRF token, a post from this very browser (its cookie sent) is refused.
    forged = page.request.post(f"{stack}/console/jobs/bulk", form={"action": "retry", "state": "dead"})
    assert forged.status == 403, forged.text()
    assert "CSRF" in forged.text()
    # With the token but from another site (its Origin), refused as well.
    csrf = page.locator("form.who input[name=csrf]").get_attribute("value")
    form = {"action": "retry", "state": "dead", "csrf": csrf or ""}
    forged = page.request.post(f"{stack}/console/jobs/bulk", form=form, headers={"Origin": "http://evil.example"})
    assert forged.status == 403, forged.text()
    assert "another site" in forged.text()
    assert state_of(stack, key, job) == "dead"

    marker.unlink()
    page.get_by_role("link", name="Retry all matching").click()
    expect(page.get_by_role("status")).to_contain_text("1 dead job matches")
    page.get_by_role("button", name="Confirm: retry 1 job").click()
    expect(page.get_by_role("status")).to_contain_text("Retried 1 jobs.")

    expect(job_link(page, job)).to_have_count(0)  # the page still filters dead jobs: none left
    page.get_by_role("link", name="Clear").click()
    job_link(page, job).click()
    expect(page).to_have_url(f"{stack}/console/jobs/{job}")
    badge = page.locator("h1 [data-state]")
    expect(badge).to_have_text("succeeded")  # live, or already so when the page loaded
    timeline = page.locator("table.timeline tbody")
    expect(timeline.get_by_role("row").filter(has_text="manual_retry")).to_contain_text("dead → queued")
    expect(timeline.get_by_role("row").last).to_contain_text("succeeded")
    assert state_of(stack, key, job) == "succeeded"


def test_a_read_only_key_sees_no_action_and_cannot_forge_one(
    stack: str, make_key: Callable[..., tuple[str, str]], new_page: OpenPage
) -> None:
    tenant, admin = make_key()
    _, reader = make_key("read", tenant=tenant)
    (dead,) = dead_jobs(stack, admin, 1, message="read-only")
    queued = submit(stack, admin, "examples.echo", {"message": "waits"}, queue=NOBODY)

    # The admin of the tenant is shown every button (so their absence below means something).
    page = new_page()
    sign_in(page, stack, admin)
    for name in ("Retry all matching", "Cancel all matching"):
        expect(page.get_by_role("link", name=name)).to_be_visible()
    page.goto(f"{stack}/console/jobs/{dead}")
    expect(page.get_by_role("button", name="Retry", exact=True)).to_be_visible()
    page.goto(f"{stack}/console/jobs/{queued}")
    expect(page.get_by_role("button", name="Cancel", exact=True)).to_be_visible()

    page = new_page()
    sign_in(page, stack, reader)
    expect(job_link(page, dead)).to_be_visible()
    for name in ("Retry all matching", "Cancel all matching"):
        expect(page.get_by_role("link", name=name)).to_have_count(0)
    page.goto(f"{stack}/console/jobs/{dead}")
    expect(page.locator("h1 [data-state]")).to_have_text("dead")
    expect(page.get_by_role("button", name="Retry", exact=True)).to_have_count(0)
    page.goto(f"{stack}/console/jobs/{queued}")
    expect(page.locator("h1 [data-state]")).to_have_text("queued")
    expect(page.get_by_role("button", name="Cancel", exact=True)).to_have_count(0)

    forged = page.request.post(f"{stack}/console/jobs/bulk", form={"action": "retry", "state": "dead"})
    assert forged.status == 403, forged.text()
    forged = page.request.post(f"{stack}/console/jobs/{queued}/cancel", form={})
    assert forged.status == 403, forged.text()
    assert state_of(stack, admin, dead) == "dead"
    assert state_of(stack, admin, queued) == "queued"


def test_another_tenants_job_is_out_of_sight(
    stack: str, make_key: Callable[..., tuple[str, str]], new_page: OpenPage
) -> None:
    _, mine_key = make_key("submit,read")
    their_tenant, theirs_key = make_key("submit,read")
    mine = submit(stack, mine_key, "examples.echo", {"message": "mine"}, queue=NOBODY)
    theirs = submit(stack, theirs_key, "examples.echo", {"message": "theirs"}, queue=NOBODY)
    page = new_page()
    sign_in(page, stack, mine_key)
    page.goto(f"{stack}/console/jobs?queue={NOBODY}")
    expect(job_link(page, mine)).to_be_visible()
    expect(job_link(page, theirs)).to_have_count(0)
    response = page.goto(f"{stack}/console/jobs/{theirs}")
    assert response is not None and response.status == 404
    expect(page.get_by_role("alert")).to_contain_text(f"no job {theirs}")
    # a tenant named in the address is an admin's reach only
    for path in (f"/console/jobs/{theirs}?tenant={their_tenant}", f"/console/jobs?tenant={their_tenant}"):
        response = page.goto(f"{stack}{path}")
        assert response is not None and response.status == 403, path
    response = page.goto(f"{stack}/console/jobs/{mine}")
    assert response is not None and response.status == 200


def test_no_page_makes_a_request_outside_its_origin(
    stack: str, make_key: Callable[..., tuple[str, str]], new_page: OpenPage
) -> None:
    _, key = make_key()
    running = submit(stack, key, "examples.steps", {"steps": 30, "seconds_per_step": 0.5})
    (dead,) = dead_jobs(stack, key, 1, message="origin")
    wf = httpx.post(
        f"{stack}/workflows", headers={"Authorization": f"Bearer {key}"}, timeout=15,
        json={"name": "wf-origin", "steps": [{"name": "a", "type": "examples.echo", "args": {"message": "a"}}]},
    )  # fmt: skip
    assert wf.status_code == 202, wf.text
    page = new_page()
    requested: list[str] = []
    sockets: list[str] = []
    complaints: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.on("console", lambda m: complaints.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: complaints.append(str(e)))
    sign_in(page, stack, key, "/console")
    paths = [
        "/console", "/console/jobs?state=dead", "/console/jobs/confirm?action=retry&state=dead",
        f"/console/jobs/{dead}", "/console/queues", "/console/schedules", "/console/workflows",
        f"/console/workflows/{wf.json()['id']}", "/console/keys", "/console/actions",
    ]  # fmt: skip
    for path in paths:
        response = page.goto(f"{stack}{path}")
        assert response is not None and response.status == 200, path
    with page.expect_websocket():  # a live job's page opens the job stream
        page.goto(f"{stack}/console/jobs/{running}")
    page.wait_for_load_state("networkidle")
    host = stack.removeprefix("http://")
    assert all(u.startswith(stack + "/") for u in requested), [u for u in requested if not u.startswith(stack)]
    assert {f"{stack}/console/static/console.css", f"{stack}/console/static/console.js"} <= set(requested)
    assert sockets and all(u.startswith(f"ws://{host}/jobs/stream") for u in sockets), sockets
    assert complaints == [], complaints  # a blocked outside asset would be a CSP complaint here
    httpx.post(f"{stack}/jobs/{running}/cancel", headers={"Authorization": f"Bearer {key}"}, timeout=15)


def test_a_job_page_follows_its_job_live(
    stack: str, make_key: Callable[..., tuple[str, str]], new_page: OpenPage
) -> None:
    _, key = make_key()
    job = submit(stack, key, "examples.steps", {"steps": 6, "seconds_per_step": 0.5})
    wait_for(lambda: state_of(stack, key, job) == "running", 30, 0.05, "the job running")
    page = new_page()
    sign_in(page, stack, key, f"/console/jobs/{job}")
    loads: list[str] = []
    page.on("load", lambda: loads.append(page.url))
    badge = page.locator("h1 [data-state]")
    expect(badge).to_have_text("running")
    expect(badge).to_have_text("succeeded")
    assert loads == [], "the page reloaded instead of updating itself"
    expect(page.locator("table.timeline")).to_contain_text("succeeded")
    expect(page.get_by_role("button", name="Cancel", exact=True)).to_have_count(0)


def test_signing_out_ends_the_session(stack: str, make_key: Callable[..., tuple[str, str]], new_page: OpenPage) -> None:
    _, key = make_key("read")
    page = new_page()
    sign_in(page, stack, key, "/console/workflows")
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "medic_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{stack}/console/sign-in")
    page.goto(f"{stack}/console/jobs")
    expect(page).to_have_url(re.compile(r"/console/sign-in\?next="))
    expect(page.get_by_label("API key")).to_be_visible()
    # the old cookie, replayed, no longer opens anything: the session ended in the ledger too
    r = httpx.get(f"{stack}/console/jobs", cookies={"medic_session": cookie["value"]}, timeout=15)
    assert r.status_code == 303 and r.headers["location"].startswith("/console/sign-in"), r.status_code


def test_screenshots_of_every_page(
    stack: str, make_key: Callable[..., tuple[str, str]], new_page: OpenPage, img: Path, procs: Processes
) -> None:
    """Each page with real data in it (docs/console.md shows them), the control loops running (the
    overview's workers, admission and slots come from their snapshot)."""
    procs.control_plane()
    tenant, key = make_key()
    api = httpx.Client(base_url=stack, headers={"Authorization": f"Bearer {key}"}, timeout=15)
    echoes = [submit(stack, key, "examples.echo", {"message": f"report {i}"}) for i in range(4)]
    submit(stack, key, "examples.sleep", {"seconds": 0.2})
    dead = [submit(stack, key, "examples.fail", {"message": f"upstream 503 ({i})"}, max_attempts=2) for i in range(3)]
    submit(stack, key, "examples.steps", {"steps": 40, "seconds_per_step": 1.0})
    submit(stack, key, "examples.echo", {"message": "waits for a worker"}, queue=NOBODY)
    cancelled = submit(stack, key, "examples.echo", {"message": "not needed"}, queue=NOBODY)
    assert api.post(f"/jobs/{cancelled}/cancel").status_code in (200, 202)
    steps = [
        {"name": "extract", "type": "examples.echo", "args": {"message": "extract"}},
        {"name": "transform", "type": "examples.sleep", "args": {"seconds": 0.3}, "after": ["extract"]},
        {"name": "load", "type": "examples.echo", "args": {"message": "load"}, "after": ["extract"]},
        {"name": "report", "type": "examples.echo", "args": {"message": "report"}, "after": ["transform", "load"]},
    ]
    wf = api.post("/workflows", json={"name": "nightly-etl", "steps": steps})
    assert wf.status_code == 202, wf.text
    for name, timing in (("nightly-report", {"cron": "0 3 * * *"}), ("cache-warmup", {"every_seconds": 300})):
        r = api.post("/schedules", json={"name": name, "type": "examples.echo", "args": {"message": name}, **timing})
        assert r.status_code == 201, r.text
    wait_for(lambda: all(state_of(stack, key, j) == "dead" for j in dead), 60, 0.2, "the failing jobs dead")
    wait_for(lambda: all(state_of(stack, key, j) == "succeeded" for j in echoes), 60, 0.2, "the echoes done")
    wf_id = wf.json()["id"]
    wait_for(lambda: api.get(f"/workflows/{wf_id}").json()["state"] == "succeeded", 60, 0.2, "the workflow done")
    api.close()

    page = new_page(1280, 860)
    page.goto(f"{stack}/console/jobs")
    expect(page.get_by_label("API key")).to_be_visible()
    page.screenshot(path=str(img / "console-sign-in.png"))
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()

    def shot(path: str, name: str, wait_for_text: str) -> None:
        page.goto(f"{stack}{path}")
        expect(page.get_by_role("main")).to_contain_text(wait_for_text)
        page.screenshot(path=str(img / f"console-{name}.png"), full_page=True)

    def loops_ran() -> bool:
        page.goto(f"{stack}/console")
        return "the health loop has not run" not in page.get_by_role("main").inner_text()

    wait_for(loops_ran, 60, 0.5, "the control loops' first snapshot")
    shot("/console", "overview", "Live workers")
    shot("/console/jobs?type=examples.fail", "jobs", "examples.fail")
    page.get_by_label("State").select_option("dead")
    page.get_by_role("button", name="Filter").click()
    page.get_by_role("link", name="Retry all matching").click()
    expect(page.get_by_role("status")).to_contain_text("3 dead jobs match")
    page.screenshot(path=str(img / "console-confirm.png"), full_page=True)
    shot(f"/console/jobs/{dead[0]}", "job", "Timeline")
    shot("/console/queues", "queues", "Pause default")
    shot("/console/schedules", "schedules", "nightly-report")
    shot("/console/workflows", "workflows", "nightly-etl")
    shot(f"/console/workflows/{wf_id}", "workflow", "after transform, load")

    page.goto(f"{stack}/console/keys")
    form = page.get_by_role("form", name="Create a key")
    form.get_by_label("Tenant").fill(tenant)
    form.get_by_label("Name").fill("dashboards (read only)")
    form.get_by_role("button", name="Create key").click()
    expect(page.get_by_role("status")).to_contain_text("shown this once")
    page.screenshot(path=str(img / "console-keys.png"), full_page=True)
    # the screenshot shows a live key: revoke it (a throwaway of a test database anyway)
    row = page.get_by_role("row").filter(has_text="dashboards (read only)")
    page.once("dialog", lambda d: d.accept())
    row.get_by_role("button", name="Revoke").click()
    expect(row).to_contain_text("revoked")

    shot("/console/actions", "actions", "create_key")

    phone = new_page(390, 844)
    phone.goto(f"{stack}/console/sign-in")
    phone.get_by_label("API key").fill(key)
    phone.get_by_role("button", name="Sign in").click()
    phone.goto(f"{stack}/console/jobs")
    expect(phone.get_by_role("main")).to_contain_text("examples.fail")
    phone.screenshot(path=str(img / "console-jobs-phone.png"), full_page=True)
    names = {p.name for p in img.glob("console-*.png")}
    assert {f"console-{n}.png" for n in ("sign-in", "overview", "jobs", "confirm", "job", "keys")} <= names
