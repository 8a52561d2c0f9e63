"""Jobs used only by the tests. Each execution is recorded in Redis so tests can prove how many
times a job really ran, and that no two executions of one job overlapped.

Each record names the job and the delivery (the Celery task id) that ran, so a test can match
executions to the ledger's claims (tests/ledger_view.py `assert_no_overlap`).

Records go to `MEDIC_TEST_RECORD_REDIS_URL` (the shared Redis), not to the broker's Redis, so a
chaos test that restarts the broker keeps them."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import celery
import redis
from billiard.exceptions import SoftTimeLimitExceeded

from worker.runtime.registry import job
from worker.settings import get_settings

_clients: dict[tuple[int, str], redis.Redis[str]] = {}


def get_redis() -> redis.Redis[str]:
    url = os.environ.get("MEDIC_TEST_RECORD_REDIS_URL") or get_settings().redis_url
    key = (os.getpid(), url)
    if key not in _clients:
        _clients[key] = redis.Redis.from_url(url, decode_responses=True)
    return _clients[key]


def _log_key(tag: str) -> str:
    return f"{get_settings().key_prefix}test:executions:{tag}"


def _current_delivery() -> tuple[str, str]:
    """(job_id, delivery_id) of the Celery task running this job: the message's args are
    (job_id, delivery_id) and its task id is the delivery_id (worker/broker/publish.py send).
    Empty strings when called outside a worker."""
    request = celery.current_task.request if celery.current_task else None
    if request is None or not request.id or not request.args:
        return "", ""
    return str(request.args[0]), str(request.id)


def _start(tag: str) -> tuple[str, dict[str, float | int | str]]:
    """Record the start of this execution under `tag` and under its job (by delivery)."""
    job_id, delivery_id = _current_delivery()
    entry: dict[str, float | int | str] = {
        "pid": os.getpid(), "start": time.time(), "end": 0.0, "job": job_id, "delivery": delivery_id,
    }  # fmt: skip
    execution = f"{os.getpid()}:{time.time_ns()}"
    _write(tag, execution, entry)
    return execution, entry


def _write(tag: str, execution: str, entry: dict[str, float | int | str]) -> None:
    pipe = get_redis().pipeline()
    pipe.hset(_log_key(tag), execution, json.dumps(entry))
    if entry["job"]:
        pipe.hset(_job_key(str(entry["job"])), execution, json.dumps(entry))
    pipe.execute()


def _job_key(job_id: str) -> str:
    return f"{get_settings().key_prefix}test:job-executions:{job_id}"


def job_executions(job_id: str) -> list[dict[str, float | int | str]]:
    """Every recorded execution of one job (pid, start, end, delivery), however it was tagged."""
    entries = get_redis().hgetall(_job_key(job_id))
    return sorted((json.loads(v) for v in entries.values()), key=lambda e: float(e["start"]))


def executions(tag: str) -> list[dict[str, float | int | str]]:
    """Every recorded execution of `tag`: pid, start, end (end is 0 if the process died)."""
    entries = get_redis().hgetall(_log_key(tag))
    return sorted((json.loads(v) for v in entries.values()), key=lambda e: float(e["start"]))


@job("tests.record", backoff=0.1)
def record(tag: str, seconds: float = 0.0) -> dict[str, int]:
    """Sleep `seconds`; record the execution's start and end under `tag` and its job."""
    execution, entry = _start(tag)
    time.sleep(seconds)
    entry["end"] = time.time()
    _write(tag, execution, entry)
    return {"pid": os.getpid()}


@job("tests.hang", backoff=0.1)
def hang(tag: str) -> None:
    """Record the start (with the pid), then loop forever swallowing the soft time limit: only a
    kill ends it, and a kill leaves no end record."""
    _start(tag)
    while True:
        try:
            time.sleep(0.1)
        except SoftTimeLimitExceeded:
            continue


@job("tests.fail_then_succeed", backoff=0.1)
def fail_then_succeed(tag: str, failures: int) -> str:
    """Fail `failures` times, then succeed (the count lives in Redis, across processes)."""
    n = get_redis().incr(_log_key(tag) + ":count")
    if n <= failures:
        raise ValueError(f"failure {n} of {failures}")
    return f"succeeded on attempt {n}"


@job("tests.fail_first")
def fail_first(tag: str) -> str:
    """Fail the first attempt, then succeed. No back-off of its own: the retry waits the accepting
    process's MEDIC_DEFAULT_BACKOFF_SECONDS, so a test picks it (tests/brokers/test_run.py)."""
    n = get_redis().incr(_log_key(tag) + ":count")
    if n == 1:
        raise ValueError("the first attempt fails")
    return f"succeeded on attempt {n}"


@job("tests.typed")
def typed(count: int, ratio: float = 1.0, labels: list[str] | None = None) -> int:
    return count


@job("tests.unstorable")
def unstorable(kind: str, payload: object = None) -> object:
    """A result JSONB refuses: NaN/Infinity, or NUL in a string or a key (json.dumps allows all).
    `payload` takes any JSON, for tests of what the API refuses in args."""
    return {
        "nan": [1.0, float("nan")],
        "inf": {"x": float("inf")},
        "nul": {"text": "a\x00b"},
        "nul_key": {"k\x00": 1},
    }[kind]


@job("tests.sized")
def sized(size: int) -> str:
    """A result of exactly `size` bytes of JSON (a string of size - 2 characters and its quotes)."""
    return "x" * (size - 2)


def _history(path: str, name: str, event: str, **fields: object) -> None:
    """One line per event of a workflow's step, appended to a file outside the ledger: one
    `write` on an O_APPEND file, so the lines of every process stay whole and in real order."""
    line = json.dumps({"step": name, "event": event, "pid": os.getpid(), **fields}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _await_succeeded(steps: list[str]) -> None:
    """Wait until these steps of this job's own workflow have succeeded in the ledger."""
    import uuid

    from worker.ledger import db, queries, workflows

    job_id, _ = _current_delivery()
    with db.connect() as conn:
        me = queries.get_job(conn, uuid.UUID(job_id))
    assert me is not None and me.workflow_id is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with db.connect() as conn:
            states = {s.name: s.state for s in workflows.get_steps(conn, me.workflow_id)}
        if all(states.get(name) == "succeeded" for name in steps):
            return
        time.sleep(0.05)
    raise TimeoutError(f"steps {steps} did not succeed")


def _kill_at_next_publish() -> None:
    """SIGKILL this process at its next publish: the one that follows the finalize's COMMIT
    (worker/broker/publish.py commit_then_publish), so the step ends committed, its release
    with it, and the released steps' messages never sent."""
    import signal

    from worker.broker import publish

    def killed(*_: object, **__: object) -> list[object]:
        os.kill(os.getpid(), signal.SIGKILL)
        return []

    publish.publish = killed  # type: ignore[assignment]


@job("tests.wf_step")
def wf_step(
    history: str,
    name: str,
    fail: bool = False,
    seconds: float = 0.0,
    after_succeeded: list[str] | None = None,
    kill_after_finalize: bool = False,
    results: dict[str, object] | None = None,
) -> dict[str, object]:
    """A workflow's step that writes its start and end to `history`: `fail` raises;
    `after_succeeded` waits for those steps to have succeeded first; `kill_after_finalize` kills
    its own process right after its finalize commits (once: the history file says whether)."""
    _history(history, name, "start", saw=sorted(results or {}))
    if after_succeeded:
        _await_succeeded(after_succeeded)
    time.sleep(seconds)
    if fail:
        _history(history, name, "failed")
        raise RuntimeError(f"step {name} fails on purpose")
    if kill_after_finalize and '"event": "killing"' not in Path(history).read_text():
        _history(history, name, "killing")
        _kill_at_next_publish()
    _history(history, name, "end")
    return {"step": name, "saw": sorted(results or {}), "results": results or {}}


@job("tests.keyed3", concurrency_key="account", concurrency_limit=3)
def keyed3(account: str) -> str:
    """At most 3 jobs of one account at once (tests/ledger/test_dispatch.py)."""
    return account


@job("tests.rated", rate_limit="5/s", rate_limit_key="bucket")
def rated(bucket: str) -> str:
    """5 starts a second per `bucket`: a test's own bucket, not shared with another test's."""
    return bucket


@job("tests.fails_while")
def fails_while(marker: str) -> str:
    """Fail while the file `marker` exists, succeed once it is gone (tests/console/test_console_browser.py
    deletes it before a retry)."""
    if Path(marker).exists():
        raise RuntimeError(f"{marker} still exists")
    return "the marker is gone"
