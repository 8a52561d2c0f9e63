"""A TCP proxy that can turn the connections it holds into half-open ones, for real.

Each accepted connection is relayed to `upstream`. `blackhole()` makes every connection open at
that moment silently stop forwarding, in both directions: bytes are read and dropped, no socket is
closed, no RST or FIN is sent, so neither end can tell (the kernel answers keepalives: the peer is
the proxy, which is alive). That is the connection a NAT, a load balancer or a failed-over broker
leaves behind, on which Celery's consumer waits for a BRPOP reply for ever (celery issues 8082,
10205). Connections accepted afterwards are relayed normally, so a client that reconnects heals,
unless `trap` is set: then any connection that sends those bytes (b"BRPOP": a consumer's) turns
black before they are forwarded, a consumer that no reconnect can heal while the rest works.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class _Pair:
    """One relayed connection: the client's socket and ours to the upstream."""

    def __init__(self, client: socket.socket, upstream: socket.socket, proxy: BlackholeProxy) -> None:
        self.client, self.upstream, self.proxy = client, upstream, proxy
        self.black = threading.Event()
        self.closed = False

    def pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                trap = self.proxy.trap
                if from_client and trap is not None and trap in data:
                    self.black.set()  # before forwarding: the command never reaches the server
                if not self.black.is_set():
                    dst.sendall(data)
        if not self.black.is_set():  # a black-holed pair never tells the other end anything
            self.close()

    def close(self) -> None:
        self.closed = True
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class BlackholeProxy:
    """Listens on 127.0.0.1:<port> and relays each connection to (host, port) `upstream`."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: list[_Pair] = []
        self.accepted = 0
        self.trap: bytes | None = None  # a connection that sends these bytes turns black, old or new
        threading.Thread(target=self._accept, name="blackhole-accept", daemon=True).start()

    def blackhole(self) -> int:
        """Every connection open now stops forwarding, silently; returns how many there were."""
        with self._lock:
            self._pairs = [pair for pair in self._pairs if not pair.closed]
            for pair in self._pairs:
                pair.black.set()
            return len(self._pairs)

    def accepted_since(self, count: int) -> int:
        """Connections accepted after the `accepted` count was `count`."""
        with self._lock:
            return self.accepted - count

    def close(self) -> None:
        self._server.close()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            pair.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            pair = _Pair(client, upstream, self)
            with self._lock:
                self._pairs.append(pair)
                self.accepted += 1
            threading.Thread(target=pair.pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=pair.pump, args=(upstream, client, False), daemon=True).start()
