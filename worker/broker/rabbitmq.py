"""RabbitMQ as the broker: deliveries published with confirms to queues declared as the workers
declare them, delays held by the broker, and the depth a passive declare tells.

"Published" means the broker has the message: every publish waits for RabbitMQ's confirms (one
wait per batch, not per message), with `mandatory` set so a message no queue takes comes back
as a refusal instead of vanishing. Messages are persistent and queues durable (quorum by
default), so what RabbitMQ confirmed survives its restart; a refused or unconfirmed publish is
marked unpublished by the outbox and re-sent by reconcile, exactly as on Redis.

Delays (a retry's back-off) go through kombu's native delayed delivery: 28 TTL levels that hold
the message in the broker until it is due. Sent with an ETA straight to the queue instead, the
message would sit in a worker's prefetch, and on quorum queues, whose prefetch cannot grow,
it would block that worker's slot until due. Each queue is bound to the delivery exchange by an
exact key (28 words, then its name), so `a.b` never receives `b`'s messages.

Only one thread uses a publisher at a time (`_Pool`); a publisher that saw any error is closed,
never reused.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import amqp
from kombu import connection as kombu_connection
from kombu.transport import native_delayed_delivery as delayed

from worker.broker.celery_app import app
from worker.broker.messages import Delivery
from worker.clock import utcnow
from worker.forksafe import PerProcess
from worker.settings import get_settings

log = logging.getLogger(__name__)

DELAY_WORDS = delayed.MAX_NUMBER_OF_BITS_TO_USE  # 28 bits: delays up to 8.5 years
MAX_DELAY_SECONDS = 2**DELAY_WORDS - 1
CONNECT_TIMEOUT_SECONDS = 2.0
KombuConnection: Any = kombu_connection.Connection  # untyped: every call on it is Any


# A connection that failed, as against a broker that refused: worth one more try on a new one.
CONNECTION_ERRORS: tuple[type[Exception], ...] = (OSError, amqp.exceptions.ConnectionError)


class PublishRefusedError(Exception):
    """RabbitMQ nacked a message, returned it (no queue took it), or did not confirm in time."""


def delayed_binding(queue: str) -> str:
    """The key binding `queue` to the delivery exchange: any 28-bit countdown, then exactly its name."""
    return ".".join(["*"] * DELAY_WORDS) + "." + queue


def route(d: Delivery, now: Any) -> tuple[str, str]:
    """(exchange, routing key) of a delivery: the queue itself through the default exchange, or
    the first delay level for a delivery due a second or more from now (rounded up to whole
    seconds: never early; the message's ETA header keeps the exact time). A shorter delay waits
    in the worker, as on Redis."""
    wait = (d.eta - now).total_seconds() if d.eta is not None else 0.0
    if wait >= 1:
        countdown = min(math.ceil(wait), MAX_DELAY_SECONDS)
        return delayed.level_name(DELAY_WORDS - 1), delayed.calculate_routing_key(countdown, d.queue)
    return "", d.queue


def amqp_message(d: Delivery) -> amqp.Message:
    """The AMQP message kombu's producer would make of this delivery (persistent, JSON)."""
    return amqp.Message(
        d.body,
        content_type="application/json",
        content_encoding="utf-8",
        application_headers=d.headers,
        delivery_mode=2,
        priority=max(0, min(9, d.priority)),
        **d.properties,
    )


class _Publisher:
    """One connection with a channel in confirm mode, and the queues it has declared."""

    def __init__(self, url: str) -> None:
        self.conn = KombuConnection(url, connect_timeout=CONNECT_TIMEOUT_SECONDS)
        # One attempt: connect() retries once after 2 s, which every accept would wait out (twice:
        # admission's depth, then the publish) while the broker is down.
        self.conn.ensure_connection(max_retries=0)
        self.channel: Any = self.conn.channel()
        self.channel.confirm_select()
        self.channel.events["basic_ack"].add(lambda tag, multiple: self._settle(tag, multiple, ok=True))
        self.channel.events["basic_nack"].add(lambda tag, multiple: self._settle(tag, multiple, ok=False))
        self.channel.events["basic_return"].add(self._returned)
        self.next_tag = 1
        self.pending: set[int] = set()
        self.refusals: list[str] = []
        self.declared: set[str] = set()
        self.topology = False
        self._inspector: Any = None

    def _settle(self, tag: int, multiple: bool, *, ok: bool) -> None:
        done = {t for t in self.pending if t <= tag} if multiple else {tag}
        self.pending -= done
        if not ok:
            self.refusals.append(f"{len(done)} nacked")

    def _returned(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        self.refusals.append(f"{routing_key!r} returned: {exc}")

    def declare(self, queue: str) -> None:
        """Declare `queue` as Celery's workers do (same type and arguments: a mismatch would close
        their channel), with its binding for delayed messages."""
        if not self.topology:  # the same levels a worker's DelayedDelivery step declares
            queue_type = app.conf.broker_native_delayed_delivery_queue_type
            delayed.declare_native_delayed_delivery_exchanges_and_queues(self.conn, queue_type)
            self.topology = True
        q = app.amqp.queues[queue].bind(self.channel)
        q.declare()
        delivery_exchange = delayed.CELERY_DELAYED_DELIVERY_EXCHANGE
        self.channel.queue_bind(queue=queue, exchange=delivery_exchange, routing_key=delayed_binding(queue))
        self.declared.add(queue)

    def send(self, deliveries: Sequence[Delivery], timeout: float) -> None:
        """Publish every delivery and wait for all their confirms.

        Raises:
            PublishRefusedError: one or more was nacked or returned, or not confirmed within `timeout`.
        """
        for queue in sorted({d.queue for d in deliveries} - self.declared):
            self.declare(queue)
        self.refusals.clear()
        now = utcnow()
        for d in deliveries:
            exchange, key = route(d, now)
            self.channel.basic_publish(amqp_message(d), exchange=exchange, routing_key=key, mandatory=True)
            self.pending.add(self.next_tag)
            self.next_tag += 1
        deadline = time.monotonic() + timeout
        while self.pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PublishRefusedError(
                    f"{len(self.pending)} of {len(deliveries)} messages unconfirmed after {timeout}s"
                )
            self.conn.drain_events(timeout=remaining)
        if self.refusals:
            raise PublishRefusedError("; ".join(self.refusals[:3]))

    def ready(self, queue: str) -> tuple[int, int]:
        """(ready messages, consumers) of `queue` by a passive declare; (0, 0) if it does not exist."""
        if self._inspector is None:
            self._inspector = self.conn.channel()
        try:
            ok = self._inspector.queue_declare(queue=queue, passive=True)
        except amqp.exceptions.NotFound:
            self._inspector = None  # the broker closed that channel
            return 0, 0
        return int(ok.message_count), int(ok.consumer_count)

    def close(self) -> None:
        try:
            self.conn.release()
        except Exception as exc:  # noqa: BLE001 - a broken connection is dropped however it fails
            log.debug("closing a RabbitMQ publisher: %s", exc)


class _Pool:
    """Publishers of this process, each used by one thread at a time (API threads publish in parallel)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.lock = threading.Lock()
        self.idle: list[_Publisher] = []

    @contextmanager
    def publisher(self, *, fresh: bool = False) -> Iterator[_Publisher]:
        """An idle publisher (or, `fresh` or none idle, a new connection) for this thread alone."""
        with self.lock:
            pub = self.idle.pop() if self.idle and not fresh else None
        if pub is None:
            pub = _Publisher(self.url)
        try:
            yield pub
        except BaseException:
            pub.close()  # its state (pending confirms, a closed channel) is unknown: never reused
            raise
        with self.lock:
            self.idle.append(pub)

    def close(self) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
        for pub in idle:
            pub.close()


_pool: PerProcess[str, _Pool] = PerProcess(_Pool, close=lambda pool: pool.close())


def pool() -> _Pool:
    return _pool.get(get_settings().broker)


def send(deliveries: Sequence[Delivery]) -> None:
    """Publish and wait for the broker's confirms (see the module docstring).

    A connection that was idle in the pool may have died meanwhile (RabbitMQ restarted, a proxy
    cut it): on a connection error the idle ones are closed and the batch goes once more on a
    new connection. A copy the dead one may have delivered is harmless: same delivery id, and
    the claim runs a delivery once."""
    if not deliveries:
        return
    timeout = get_settings().broker_confirm_timeout_seconds
    the_pool = pool()
    try:
        with the_pool.publisher() as pub:
            pub.send(deliveries, timeout)
    except CONNECTION_ERRORS as exc:
        if isinstance(exc, TimeoutError):  # a broker that does not answer gets no second wait
            raise
        log.info("RabbitMQ connection lost while publishing (%s); publishing once more on a new one", exc)
        the_pool.close()
        with the_pool.publisher(fresh=True) as pub:
            pub.send(deliveries, timeout)


def ready(queue: str) -> tuple[int, int]:
    """(messages ready in `queue`, its consumers): what RabbitMQ tells without its management API.
    Messages delivered to a worker and not yet acked are not counted."""
    with pool().publisher() as pub:
        return pub.ready(queue)


def reset() -> None:
    """Close this process's connections (settings changed: tests, the CLI)."""
    _pool.clear()
