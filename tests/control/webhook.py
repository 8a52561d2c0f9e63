"""A real HTTP server that records every Alertmanager-style webhook body medic posts to it."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from worker.testing.processes import free_port


class Webhook:
    """A real HTTP server recording every Alertmanager-style body posted to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.bodies.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def calls(self, alertname: str, **labels: str) -> list[str]:
        """The status of every call about one alert instance, in order."""
        return [
            b["status"]
            for b in list(self.bodies)
            if b["commonLabels"]["alertname"] == alertname
            and all(b["commonLabels"].get(k) == v for k, v in labels.items())
        ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
