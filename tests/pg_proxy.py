"""A TCP proxy in front of PostgreSQL that loses the answer to one COMMIT, for real.

Armed with a marker (a string the transaction's statements carry, e.g. a job's argument), it
forwards the COMMIT of the first transaction that sent the marker to the server, then closes
both sockets at once: the server reads the COMMIT before the end of the stream and commits, the
client never reads the answer and sees its connection die. Point a process at `url` with
`sslmode=disable` (an encrypted stream would hide the COMMIT).
"""

from __future__ import annotations

import contextlib
import socket
import threading

import sqlalchemy as sa

# psycopg2's `connection.commit()`: a simple-protocol Query message, "COMMIT" and its NUL.
COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"
ROLLBACK = b"Q\x00\x00\x00\x0dROLLBACK\x00"


class CommitDropper:
    """Listens on 127.0.0.1:<port> and relays each connection to `upstream`."""

    def __init__(self, upstream_url: str) -> None:
        self.upstream_url = sa.engine.make_url(upstream_url)
        self._upstream = (self.upstream_url.host or "127.0.0.1", self.upstream_url.port or 5432)
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._marker: bytes | None = None
        self._lock = threading.Lock()
        self.dropped = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        proxied = self.upstream_url.set(host="127.0.0.1", port=self.port, query={"sslmode": "disable"})
        return proxied.render_as_string(hide_password=False)

    def arm(self, marker: str) -> None:
        """Lose the answer to the COMMIT of the next transaction whose statements carry `marker`."""
        with self._lock:
            self._marker = marker.encode()
            self.dropped.clear()

    def close(self) -> None:
        self._server.close()
        for sock in list(self._sockets):
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._upstream)
            self._sockets += [client, upstream]
            threading.Thread(target=self._to_server, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._to_client, args=(upstream, client), daemon=True).start()

    def _to_server(self, client: socket.socket, upstream: socket.socket) -> None:
        sent = bytearray()  # what this connection sent since its last COMMIT or ROLLBACK
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                sent += data
                if COMMIT in data and self._take(bytes(sent)):
                    # The client first (nothing may reach it any more), then the COMMIT and the
                    # end of the stream to the server, which reads the COMMIT before the end.
                    client.shutdown(socket.SHUT_RDWR)
                    upstream.sendall(data)
                    upstream.shutdown(socket.SHUT_WR)
                    self.dropped.set()
                    return
                upstream.sendall(data)
                if COMMIT in data or ROLLBACK in data:
                    sent.clear()
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _take(self, sent: bytes) -> bool:
        with self._lock:
            if self._marker is None or self._marker not in sent:
                return False
            self._marker = None
            return True

    @staticmethod
    def _to_client(upstream: socket.socket, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                client.sendall(data)
        for sock in (client, upstream):
            sock.close()
