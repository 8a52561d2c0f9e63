"""The console's fixtures: a browser-like HTTP client signed in with a key, and dead jobs made the
way production makes them (a real worker runs a failing job out of attempts)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import httpx
import pytest

from worker.testing.processes import wait_for

SignIn = Callable[[str], httpx.Client]


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


@pytest.fixture
def sign_in(stack: str) -> Iterator[SignIn]:
    """sign_in(key) -> a client holding that key's console session (as a browser would: cookies,
    an Origin header on posts, no Authorization header)."""
    opened: list[httpx.Client] = []

    def make(key: str) -> httpx.Client:
        c = httpx.Client(base_url=stack, timeout=15, headers={"Origin": stack})
        opened.append(c)
        r = c.post("/console/sign-in", data={"api_key": key, "next": "/console/jobs"})
        assert r.status_code == 303, r.text
        return c

    yield make
    for c in opened:
        c.close()


def submit(api: str, key: str, type_: str, args: dict[str, object], **extra: object) -> str:
    r = httpx.post(
        f"{api}/jobs",
        json={"type": type_, "args": args, **extra},
        headers={"Authorization": f"Bearer {key}"},
        timeout=15,
    )
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def state_of(api: str, key: str, job_id: str) -> str:
    r = httpx.get(f"{api}/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"}, timeout=15)
    return str(r.json()["state"])


def dead_jobs(api: str, key: str, n: int, *, message: str = "console test") -> list[str]:
    """n jobs that failed their only attempt on the shared stack's worker."""
    ids = [submit(api, key, "examples.fail", {"message": f"{message} {i}"}, max_attempts=1) for i in range(n)]
    wait_for(lambda: all(state_of(api, key, j) == "dead" for j in ids), 60, 0.2, f"{n} jobs dead")
    return ids
