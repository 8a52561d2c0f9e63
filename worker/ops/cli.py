"""The `medic` command: run the stack or one piece of it, migrate, manage keys, submit jobs."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from worker.ops import processes
from worker.settings import get_settings, reset_settings

EXIT_CONFIG = 2
EXIT_JOB_FAILED = 4


def _exec(argv: list[str]) -> None:
    """Replace this process, so signals from a container runtime reach the real server."""
    sys.stdout.flush()
    os.execv(argv[0], argv)


@click.group()
@click.option("--log-level", default="INFO", show_default=True)
def main(log_level: str) -> None:
    """medic: background jobs on Celery that heal themselves."""
    from worker import logs

    logs.setup(get_settings().log_format, log_level)


@main.group()
def db() -> None:
    """The job ledger's schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Create the database if missing and apply migrations."""
    from worker.ledger.migrate import current_revision, upgrade

    url = get_settings().database_url
    upgrade(url, revision)
    click.echo(f"ledger at revision {current_revision(url)}")


@main.group()
def keys() -> None:
    """API keys."""


def _key_queues(text: str | None) -> frozenset[str] | None:
    """--queues: each must be declared now (a typo would make a key that can submit nowhere)."""
    from worker.errors import MedicError
    from worker.ledger.apikeys import parse_queues
    from worker.runtime.queues import check_queue, declared_queues

    queues = parse_queues(text)
    if queues is None:
        return None
    s = get_settings()
    declared = declared_queues(s)
    try:
        for queue in sorted(queues):
            check_queue(queue, s, declared)
    except MedicError as exc:
        raise click.BadParameter(exc.message, param_hint="--queues") from None
    return queues


@keys.command("create")
@click.option("--tenant", required=True)
@click.option("--scopes", default="submit,read", show_default=True, help="Comma-separated: submit, read, admin.")
@click.option("--queues", default=None, help="Comma-separated queues the key may submit to (default: every one).")
@click.option("--name", default=None)
def keys_create(tenant: str, scopes: str, queues: str | None, name: str | None) -> None:
    """Create a key; the key is printed alone on the last line."""
    from worker.ledger import apikeys
    from worker.ledger import db as ledger_db

    limited = _key_queues(queues)
    with ledger_db.begin() as conn:
        raw = apikeys.create_key(conn, tenant, apikeys.parse_scopes(scopes), name, queues=limited)
    where = ",".join(sorted(limited)) if limited else "every declared queue"
    click.echo(f"created a key for tenant {tenant!r} with scopes {scopes}, queues: {where}", err=True)
    click.echo(raw)


@keys.command("list")
@click.option("--tenant", default=None, help="Only this tenant's keys.")
@click.option("--active", is_flag=True, help="Leave out revoked keys.")
def keys_list(tenant: str | None, active: bool) -> None:
    """List keys: id, prefix, tenant, scopes, queues, name, created, revoked. Never the key."""
    from worker.ledger import apikeys
    from worker.ledger import db as ledger_db

    with ledger_db.connect() as conn:
        found = apikeys.list_keys(conn, tenant=tenant, include_revoked=not active)
    click.echo("\t".join(("id", "prefix", "tenant", "scopes", "queues", "name", "created", "revoked")))
    for k in found:
        revoked = k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "active"
        cells = (str(k.id), k.prefix, k.tenant, k.scopes, k.queues or "*", k.name or "-",
                 k.created_at.isoformat(timespec="seconds"), revoked)  # fmt: skip
        click.echo("\t".join(cells))


@main.group()
def schedules() -> None:
    """Schedules: each fire a job, once per scheduled time (docs/schedules.md)."""


@schedules.command("list")
@click.option("--tenant", default=None, help="Only this tenant's schedules.")
def schedules_list(tenant: str | None) -> None:
    """List schedules: id, tenant, name, origin, type, timing, overlap, state, next and last fire, counts."""
    from worker.ledger import db as ledger_db
    from worker.ledger import schedules as ledger

    with ledger_db.connect() as conn:
        found = ledger.list_for(conn, tenant, limit=10_000) if tenant else ledger.list_all(conn, limit=10_000)
    click.echo("\t".join(("id", "tenant", "name", "origin", "type", "timing", "overlap", "state", "next", "last",
                          "fired", "skipped")))  # fmt: skip
    for sc in found:
        timing = f"every {sc.every_seconds:g}s" if sc.every_seconds is not None else f"{sc.cron} {sc.timezone}"
        when = [t.isoformat(timespec="seconds") if t else "-" for t in (sc.next_fire_at, sc.last_fire_at)]
        state = "paused" if sc.paused else "active"
        cells = (str(sc.id), sc.tenant, sc.name, sc.origin, sc.type, timing, sc.overlap, state, *when,
                 str(sc.fired), str(sc.skipped))  # fmt: skip
        click.echo("\t".join(cells))


@schedules.command("sync")
def schedules_sync() -> None:
    """Write the schedules declared in code into the ledger now (beat and control workers do at start)."""
    from worker.clock import utcnow
    from worker.control.declared import sync

    click.echo(json.dumps(sync(utcnow())))


@main.group()
def queues() -> None:
    """Queues: pause and resume (docs/operations.md, "Pausing a queue")."""


def _cli_actor() -> str:
    import getpass

    return f"cli:{getpass.getuser()}"


def _queue_change(change: Any) -> None:
    """Print a pause or resume's outcome; exit EXIT_CONFIG on an unknown queue."""
    from worker.accept import paused

    control = paused.public(change.control)
    click.echo(json.dumps({**control, "paused_at": control["paused_at"] and control["paused_at"].isoformat(),
                           "changed": change.changed, "dispatched": change.dispatched}))  # fmt: skip


@queues.command("pause")
@click.argument("queue")
@click.option("--refuse", is_flag=True, help="Refuse new jobs while paused (429 queue_paused); default: accept them.")
def queues_pause(queue: str, refuse: bool) -> None:
    """Pause QUEUE: nothing of it starts until resumed (survives restarts); jobs are still accepted."""
    from worker.accept import paused
    from worker.errors import UnknownQueueError

    try:
        change = paused.pause_queue(queue, actor=_cli_actor(), refuse=refuse)
    except UnknownQueueError as exc:
        click.echo(f"medic: {exc.message}", err=True)
        sys.exit(EXIT_CONFIG)
    _queue_change(change)


@queues.command("resume")
@click.argument("queue")
def queues_resume(queue: str) -> None:
    """Resume QUEUE and dispatch its held jobs now."""
    from worker.accept import paused
    from worker.errors import UnknownQueueError

    try:
        change = paused.resume_queue(queue, actor=_cli_actor())
    except UnknownQueueError as exc:
        click.echo(f"medic: {exc.message}", err=True)
        sys.exit(EXIT_CONFIG)
    _queue_change(change)


@queues.command("list")
def queues_list() -> None:
    """List the declared queues and every paused one: queue, state, admission, paused at, paused by."""
    from worker.accept import paused
    from worker.runtime.queues import declared_queues

    controls = paused.controls()
    click.echo("\t".join(("queue", "state", "admission", "paused_at", "paused_by")))
    for queue in sorted({*declared_queues(get_settings()).names, *controls}):
        c = controls.get(queue)
        if c is None:
            click.echo("\t".join((queue, "active", "-", "-", "-")))
            continue
        when = c.paused_at.isoformat(timespec="seconds") if c.paused_at else "-"
        click.echo("\t".join((queue, "paused", str(paused.admission_of(c)), when, c.paused_by or "-")))


@keys.command("revoke")
@click.argument("key_id", type=click.UUID)
def keys_revoke(key_id: Any) -> None:
    """Revoke a key by id; every API process refuses it within MEDIC_API_KEY_CACHE_SECONDS."""
    from worker.ledger import apikeys
    from worker.ledger import db as ledger_db

    with ledger_db.begin() as conn:
        done = apikeys.revoke_key(conn, key_id)
    if not done:
        click.echo(f"no active key {key_id}", err=True)
        sys.exit(EXIT_CONFIG)
    wait = get_settings().api_key_cache_seconds
    click.echo(f"revoked {key_id}; API processes refuse it within {wait:g} s (MEDIC_API_KEY_CACHE_SECONDS)")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.option("--workers", default=1, show_default=True, help="uvicorn worker processes.")
def api(host: str, port: int, workers: int) -> None:
    """Run the HTTP API."""
    if workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # each uvicorn worker writes its metrics here; the one answering a scrape sums them (api/metrics.py)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(fresh_api_metrics_dir(port))
    _exec(processes.api_cmd(host, port, workers))


def api_metrics_dir(port: int) -> Path:
    """Where `medic api --workers N` on `port` keeps its workers' metric files."""
    return Path(tempfile.gettempdir()) / f"medic-api-metrics-{port}"


def fresh_api_metrics_dir(port: int) -> Path:
    """The metrics directory of the API on `port`, emptied: one per port rather than one per start
    (the command execs uvicorn, so nothing is left to remove it at exit), and wiped at start as
    prometheus-client's multiprocess mode requires, or a previous run's counts would be summed in."""
    path = api_metrics_dir(port)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700, parents=True)
    return path


@main.command()
@click.option("-Q", "--queues", default=None, help="Queues to consume (default: the default queue).")
@click.option("-c", "--concurrency", default=2, show_default=True)
@click.option("-n", "--name", default="worker", show_default=True)
def worker(queues: str | None, concurrency: int, name: str) -> None:
    """Run a Celery worker for application jobs (refused past the connection budget)."""
    from worker.ops import budget

    s = get_settings()
    _check_budget([budget.worker_share(s, concurrency)], s.database_url)
    os.environ.update(budget.worker_env(s))
    _exec(processes.worker_cmd(queues or s.default_queue, concurrency, name))


def _check_budget(shares: Any, database_url: str) -> None:
    """Exit EXIT_CONFIG with the reason and the fix when `shares` do not fit PostgreSQL's slots."""
    from sqlalchemy.exc import OperationalError

    from worker.ops import budget

    try:
        problem = budget.check(shares, database_url)
    except OperationalError as exc:  # the server is down: the process's own start reports it
        click.echo(f"medic: connection budget not checked, PostgreSQL unreachable: {exc.orig}", err=True)
        return
    if problem:
        click.echo(f"medic: {problem}", err=True)
        sys.exit(EXIT_CONFIG)


@main.command()
def control() -> None:
    """Run the control worker (the medic.control queue: recovery, reconcile, backpressure)."""
    from worker.ops import budget

    os.environ.update(budget.worker_env(get_settings()))
    _exec(processes.control_cmd())


@main.command()
def beat() -> None:
    """Run Celery beat with medic's schedule of control loops."""
    _exec(processes.beat_cmd())


@main.command()
@click.option("--port", default=5555, show_default=True)
@click.option("--address", default="127.0.0.1", show_default=True)
def flower(port: int, address: str) -> None:
    """Run Flower behind basic auth (MEDIC_FLOWER_USER / MEDIC_FLOWER_PASSWORD)."""
    s = get_settings()
    os.environ.update(processes.flower_env(s))  # the password in the environment, not in argv (`ps`)
    _exec(processes.flower_cmd(s, port, address))


@main.command()
@click.option("--api-port", default=8000, show_default=True)
@click.option("--flower-port", default=5555, show_default=True)
@click.option("--workers", default=1, show_default=True, help="Application worker processes.")
@click.option("--concurrency", default=2, show_default=True, help="Prefork children per worker.")
@click.option("--no-flower", is_flag=True, help="Do not start Flower.")
@click.option(
    "--broker",
    default=None,
    help="The broker of the task messages: amqp://user:password@host:5672/vhost (RabbitMQ). "
    "Default: MEDIC_BROKER_URL, else MEDIC_REDIS_URL's Redis.",
)
def up(api_port: int, flower_port: int, workers: int, concurrency: int, no_flower: bool, broker: str | None) -> None:
    """Run the whole stack on this host as supervised child processes."""
    from worker.ops import budget
    from worker.ops.stack import run_stack
    from worker.settings import DEFAULT_DATABASE_URL

    s = get_settings()
    url = os.environ.get("MEDIC_DATABASE_URL", DEFAULT_DATABASE_URL)
    _check_budget(budget.stack_shares(s, workers=workers, concurrency=concurrency), url)
    sys.exit(run_stack(api_port=api_port, flower_port=flower_port, workers=workers,
                       concurrency=concurrency, flower=not no_flower, broker=broker))  # fmt: skip


@main.command()
@click.option("--role", type=click.Choice(["api", "worker", "control", "beat"]), default="worker", show_default=True)
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="The API (role api).")
@click.option("--live", is_flag=True, help="Liveness: ask only the process itself, never Redis or the ledger.")
def health(role: str, url: str, live: bool) -> None:
    """Print this process's health as JSON; exit 0 healthy, 1 not (a probe for containers)."""
    from worker.ops import health as probes

    result = probes.live(role, api_url=url) if live else probes.check(role, api_url=url)
    click.echo(json.dumps(result))
    sys.exit(0 if result["ok"] else 1)


@main.command()
@click.argument("job_type")
@click.option("--args", "args_json", default="{}", show_default=True, help="JSON object of keyword arguments.")
@click.option("--queue", default=None)
@click.option("--priority", default=0)
@click.option("--idempotency-key", default=None)
@click.option("--wait", is_flag=True, help="Follow the job until it ends.")
@click.option("--timeout", "wait_timeout", default=300.0, show_default=True, help="Seconds to wait with --wait.")
@click.option("--api-url", envvar="MEDIC_API_URL", default="http://127.0.0.1:8000", show_default=True)
@click.option("--key", envvar="MEDIC_API_KEY", required=True, help="API key (or MEDIC_API_KEY).")
def submit(job_type: str, args_json: str, queue: str | None, priority: int, idempotency_key: str | None,
           wait: bool, wait_timeout: float, api_url: str, key: str) -> None:  # fmt: skip
    """Submit a job over HTTP; with --wait, exit 0 only if it succeeded."""
    import httpx

    try:
        args = json.loads(args_json)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--args") from None
    headers = {"Authorization": f"Bearer {key}"}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    body: dict[str, Any] = {"type": job_type, "args": args, "priority": priority}
    if queue:
        body["queue"] = queue
    with httpx.Client(base_url=api_url, headers=headers, timeout=10) as client:
        response = client.post("/jobs", json=body)
        if response.status_code >= 400:
            click.echo(response.text, err=True)
            sys.exit(EXIT_JOB_FAILED)
        job = response.json()
        click.echo(json.dumps(job, indent=2))
        if not wait:
            return
        from worker.ops.follow import Progress, follow_stream, poll

        deadline = time.monotonic() + wait_timeout
        progress = Progress()  # on stderr: stdout stays the job's JSON
        follow_stream(api_url, key, job["id"], deadline, progress.show)
        progress.done()
        job = poll(client, job["id"], deadline)  # the final row; polls only if the stream failed
        click.echo(json.dumps(job, indent=2))
        sys.exit(0 if job["state"] == "succeeded" else EXIT_JOB_FAILED)


if __name__ == "__main__":
    reset_settings()
    main()
