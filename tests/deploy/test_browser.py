"""Headless Chromium (Debian's `chromium`, driven by Playwright) on a real stack:

- Flower behind basic auth shows the application jobs just run, by name and state; without the
  credentials it refuses (401);
- the API's /docs renders its operations from the assets it serves itself (no internet here).

Screenshots go to the test's tmp dir, or to docs/img/ (which docs/deploy.md shows) with
MEDIC_SCREENSHOTS=docs/img.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from worker.ops import processes
from worker.settings import get_settings
from worker.testing.processes import Processes, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium")
USER, PASSWORD = "medic", "browser-test-pw"
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="chromium missing: apt-get install chromium (.ci/run does)"),
    pytest.mark.timeout(180),
    pytest.mark.slow,
]
playwright_sync = pytest.importorskip("playwright.sync_api")
QUEUE = "default"


@pytest.fixture
def img(tmp_path: Path) -> Path:
    chosen = os.environ.get("MEDIC_SCREENSHOTS")
    return ROOT / chosen if chosen else tmp_path


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_sync.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-quic"])
        yield b
        b.close()


def test_flower_shows_the_jobs_just_run_behind_basic_auth(
    procs: Processes, make_key: object, browser: playwright_sync.Browser, img: Path
) -> None:
    _, api = procs.api()
    port = free_port()
    flower_url = f"http://127.0.0.1:{port}"
    s = get_settings()
    env = {"FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}"}
    procs.start("flower", processes.flower_cmd(s, port), **env)
    auth = (USER, PASSWORD)
    wait_for(lambda: _get(f"{flower_url}/healthcheck") == 200, 30, 0.2, "flower up")
    procs.worker("w-browser", QUEUE, 2)
    # Flower switches task events on remotely (workers start without -E): wait until it sees the worker.
    workers = f"{flower_url}/api/workers?refresh=1"
    wait_for(lambda: bool(httpx.get(workers, auth=auth, timeout=10).json()), 30, 0.5, "worker seen by Flower")
    _, key = make_key()  # type: ignore[operator]
    http = httpx.Client(base_url=api, headers={"Authorization": f"Bearer {key}"}, timeout=10)

    def run_jobs() -> set[str]:
        r = http.post("/jobs", json={"type": "examples.echo", "args": {"message": "seen in flower"}})
        assert r.status_code == 202, r.text
        tasks = httpx.get(f"{flower_url}/api/tasks", auth=auth, timeout=5).json()
        return {t["uuid"] for t in tasks.values() if t["name"] == "examples.echo" and t["state"] == "SUCCESS"}

    # Events reach Flower only once it has switched them on: submit until a run shows up.
    wait_for(run_jobs, 60, 1.0, "a finished examples.echo in Flower")
    http.close()

    # Without credentials: refused.
    # Without credentials (or with wrong ones): refused. Chromium meets the 401 with an auth
    # challenge it cannot answer headless, so the navigation fails rather than loading the page.
    assert httpx.get(f"{flower_url}/tasks", timeout=5).status_code == 401
    assert httpx.get(f"{flower_url}/api/tasks", auth=(USER, "wrong"), timeout=5).status_code == 401
    anonymous = browser.new_context()
    with pytest.raises(playwright_sync.Error, match="ERR_INVALID_AUTH_CREDENTIALS"):
        anonymous.new_page().goto(f"{flower_url}/tasks")
    anonymous.close()

    # With them: the tasks page lists the job by name and state.
    context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD},
                                  viewport={"width": 1400, "height": 800})  # fmt: skip
    page = context.new_page()
    response = page.goto(f"{flower_url}/tasks")
    assert response is not None and response.status == 200
    row = page.locator("table#tasks-table tbody tr", has_text="examples.echo").first
    row.wait_for(timeout=20_000)
    assert "SUCCESS" in row.inner_text()
    page.screenshot(path=str(img / "flower-tasks.png"))
    context.close()


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def test_api_docs_render_their_operations_offline(
    procs: Processes, browser: playwright_sync.Browser, img: Path
) -> None:
    _, api = procs.api()
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(f"{api}/docs")
    page.locator(".opblock").first.wait_for(timeout=20_000)
    summaries = page.locator(".opblock-summary-path").all_inner_texts()
    assert "/jobs" in summaries and "/jobs/{job_id}" in summaries
    assert all(u.startswith(api) for u in requested), [u for u in requested if not u.startswith(api)]
    page.screenshot(path=str(img / "api-docs.png"))
    context.close()
