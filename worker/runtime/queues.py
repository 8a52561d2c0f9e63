"""Declared queues: the only names a job may be queued on.

A queue is a Redis list named after it (under the broker key prefix), so a free-text queue name
can reach any key in the broker's Redis: the control queue (two long sleeps there stall recovery),
kombu's own keys (`_kombu.binding.*`, `unacked`: LLEN on them raises WRONGTYPE in every loop that
measures depth), a priority sub-queue, or medic's own keys. And a queue nobody consumes keeps its
jobs queued for ever. So queues are declared: the queues of the registered job types, the default
queue, and `MEDIC_QUEUES`; internal names are refused even when declared.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from worker.broker.celery_app import CONTROL_QUEUE
from worker.errors import UnknownQueueError
from worker.runtime.registry import all_specs, load_job_modules
from worker.settings import Settings

# A conservative alphabet: no ':' (key separators), no control characters (kombu's priority
# separator is "\x06\x16"), no leading '_' (kombu's `_kombu.binding.*` keys) or '.'.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}")
# kombu's Redis transport keeps these keys next to the queues (kombu/transport/redis.py)
_KOMBU_KEYS = frozenset({"unacked", "unacked_index", "unacked_mutex"})
_INTERNAL_PREFIXES = ("medic.", "_kombu", "celery-task-meta-", "celeryev")
PRIORITY_SEPARATOR = "\x06\x16"


@dataclass(frozen=True)
class DeclaredQueues:
    """Exact names, and prefixes declared as `name-*` in MEDIC_QUEUES (per-tenant queues, tests)."""

    names: frozenset[str]
    prefixes: tuple[str, ...] = ()

    def __contains__(self, queue: object) -> bool:
        if not isinstance(queue, str) or is_internal(queue):
            return False
        return queue in self.names or any(queue.startswith(p) for p in self.prefixes)


def is_internal(queue: str, settings: Settings | None = None) -> bool:
    """A name that is, or could collide with, a key the platform or the broker uses itself."""
    if not _NAME.fullmatch(queue) or PRIORITY_SEPARATOR in queue:
        return True
    if queue == CONTROL_QUEUE or queue in _KOMBU_KEYS or queue.startswith(_INTERNAL_PREFIXES):
        return True
    # medic's own keys share the Redis DB: a queue key must never fall under their prefix
    return settings is not None and (settings.broker_key_prefix + queue).startswith(settings.key_prefix)


def declared_queues(settings: Settings) -> DeclaredQueues:
    """Every queue a job may use: the job types' queues, the default queue, and MEDIC_QUEUES.

    Imports the configured job modules first, so a process that only enqueues sees every type.
    """
    load_job_modules(settings.job_modules)
    names = {spec.queue_or(settings) for spec in all_specs().values()} | {settings.default_queue}
    prefixes: list[str] = []
    for entry in settings.queues:
        if entry.endswith("*"):
            prefixes.append(entry[:-1])
        else:
            names.add(entry)
    return DeclaredQueues(frozenset(n for n in names if not is_internal(n, settings)), tuple(p for p in prefixes if p))


def check_queue(queue: str, settings: Settings, declared: DeclaredQueues | None = None) -> str:
    """Return `queue` if a job may use it.

    Raises:
        UnknownQueueError: not declared, or an internal name.
    """
    if is_internal(queue, settings) or queue not in (declared or declared_queues(settings)):
        raise UnknownQueueError(
            f"unknown queue {queue!r}: queues are those of the job types, the default queue and MEDIC_QUEUES",
            queue=queue,
        )
    return queue
