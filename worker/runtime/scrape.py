"""The worker's scrape endpoint: one port per worker that serves the metrics of all its processes.

A prefork worker runs jobs in child processes, which a scrape of the main process cannot see. So
the main process switches prometheus-client to its multiprocess mode before the pool forks
(`worker_init`): every process writes its values to mmaped files in a directory of this worker's
own (a shared directory would add two workers' counts together), and the main process serves the
sum of them on `MEDIC_METRICS_PORT`. The metric objects are made lazily, after that switch
(worker/runtime/job_metrics.py, pool_metrics.py), because prometheus-client picks a metric's
value class when the metric is made.

The port listens on loopback unless MEDIC_METRICS_HOST says otherwise, and answers only
`Authorization: Bearer <MEDIC_METRICS_TOKEN>` when the token is set, like the API's /metrics:
job types, queue names and pool use are nobody else's business.
"""

from __future__ import annotations

import atexit
import hmac
import logging
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app, multiprocess, values
from prometheus_client.exposition import ThreadingWSGIServer

from worker.broker.celery_app import CONTROL_QUEUE
from worker.runtime.pool_metrics import watch_worker_pools
from worker.runtime.worker_info import consumed_queues, is_test_worker
from worker.settings import get_settings

log = logging.getLogger(__name__)

WORKER_PORT = 9808
CONTROL_PORT = 9809


def enable_multiprocess() -> str:
    """Give this process (and the children it will fork) a metrics directory of its own."""
    path = tempfile.mkdtemp(prefix=f"medic-metrics-{os.getpid()}-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    atexit.register(shutil.rmtree, path, True)
    return path


def bearer_matches(authorization: str | None, token: str) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time (the time taken must not tell a
    scraper how much of the token it got right). Every /metrics of medic asks this."""
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def with_token(app: WsgiApp, token: str) -> WsgiApp:
    """`app` behind the bearer token (no token: `app` itself)."""
    if not token:
        return app

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if bearer_matches(environ.get("HTTP_AUTHORIZATION"), token):
            return app(environ, start_response)
        start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")])
        return [b"/metrics needs Authorization: Bearer <MEDIC_METRICS_TOKEN>\n"]

    return guarded


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Every scrape is not a log line."""


def serve(path: str, port: int, host: str, token: str = "") -> None:
    """Serve the sum of every process's values under `path` on host:port (a daemon thread)."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    app = with_token(make_wsgi_app(registry), token)

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    httpd = make_server(host, port, app, Server, handler_class=_Quiet)
    threading.Thread(target=httpd.serve_forever, name="medic-metrics", daemon=True).start()


def metrics_port(queues: list[str]) -> int:
    s = get_settings()
    if s.metrics_port is not None:
        return s.metrics_port
    return CONTROL_PORT if CONTROL_QUEUE in queues else WORKER_PORT


def on_worker_init(sender: Any, **_: Any) -> None:
    """Main process, before the pool forks: multiprocess metrics and the scrape port."""
    if is_test_worker(sender):
        return  # an embedded test worker shares the test process: leave its metrics alone
    path = enable_multiprocess()
    watch_worker_pools()
    port = metrics_port(consumed_queues(sender.app))
    if port:
        try:
            serve(path, port, get_settings().metrics_host, get_settings().metrics_token)
            log.info("metrics on http://%s:%d/metrics", get_settings().metrics_host, port)
        except OSError as exc:  # another worker on this host has the port: run, but say so
            log.warning("metrics port %d unavailable (%s); set MEDIC_METRICS_PORT", port, exc)


def on_child_exit(pid: int | None = None, **_: Any) -> None:
    """A child's live gauges leave the sum when it exits (`liveall`)."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        multiprocess.mark_process_dead(pid or os.getpid(), path)  # type: ignore[no-untyped-call]
