"""Every Redis key medic writes or reads, in one place: medic's own (all under
``settings.key_prefix``) and kombu's layout of the broker (under ``settings.broker_key_prefix``,
kombu's ``global_keyprefix``).

kombu's Redis transport keeps queue `Q` in the list `Q` and its priority sub-queues in
`Q\\x06\\x163`, `Q\\x06\\x166`, `Q\\x06\\x169`; prefetched but unacknowledged messages in the hash
`unacked` (one for the whole DB).
"""

from __future__ import annotations

from worker.settings import get_settings


def _p() -> str:
    return get_settings().key_prefix


def worker_presence(worker: str, pid: int) -> str:
    """TTL'd key naming the live incarnation of a worker process and the deliveries it holds;
    recovery asks it before taking a job."""
    return f"{_p()}worker:{worker}:{pid}"


def workers_live() -> str:
    """Sorted set of live process incarnations scored by their last beat (epoch seconds): the
    worker count of /health/ready, read without a SCAN of the keyspace."""
    return f"{_p()}workers:live"


def control_lock(loop: str) -> str:
    """Singleton lock of one control loop."""
    return f"{_p()}lock:{loop}"


def control_stats(loop: str) -> str:
    """Hash of one control loop's runs: count, totals, the last run."""
    return f"{_p()}control:{loop}"


def beat_alive() -> str:
    """Set by the beat_alive tick: its age tells whether beat and the control worker both run."""
    return f"{_p()}beat:alive"


def known_queues() -> str:
    """Sorted set of the queues in use, scored by their last arrival (epoch seconds): the loops
    iterate over it; prune forgets a queue idle and empty past MEDIC_QUEUE_FORGET_SECONDS."""
    return f"{_p()}queues:active"


def legacy_known_queues() -> str:
    """The plain set the known queues were kept in before they could be forgotten: read with
    the sorted set until prune moves its members over and deletes it."""
    return f"{_p()}queues"


def queue_counter(queue: str, what: str) -> str:
    """Monotonic counters per queue: `enqueued` (arrivals) and `drained` (claimed by workers)."""
    return f"{_p()}queue:{queue}:{what}"


def admission(queue: str) -> str:
    """Hash published by apply_backpressure: state, depth, watermarks, retry_after; TTL'd."""
    return f"{_p()}admission:{queue}"


def admission_reservations(queue: str) -> str:
    """Room the API reserved for jobs not yet published, counted against the watermark: a sorted
    set of "<reservation id>:<n jobs>" -> expiry (ms, Redis clock); see scripts/admit.lua."""
    return f"{_p()}admission:{queue}:reservations"


def held_count(queue: str) -> str:
    """Jobs of `queue` waiting `held` in the ledger (not in the broker), counted against its
    watermark: apply_backpressure sets it from the ledger each period, the accept path adds the
    held jobs it writes in between (worker/broker/counters.py)."""
    return f"{_p()}queue:{queue}:held"


def rates(queue: str) -> str:
    """Hash of smoothed arrival and drain rates of a queue, and the counters they came from."""
    return f"{_p()}rates:{queue}"


def scale(queue: str) -> str:
    """Hash of the autoscaler's state for a queue: desired, current, last change."""
    return f"{_p()}scale:{queue}"


def queue_consumers(queue: str) -> str:
    """Sorted set of workers (hostname:pid) consuming `queue`, scored by their last registration."""
    return f"{_p()}consumers:{queue}"


def consumer_stalls() -> str:
    """Hash of stalled consumers: "worker|queue" -> JSON {worker, queue, since, at, action}; written
    by the worker's stall watchdog (runtime/progress.py), read for MedicConsumerStalled; TTL'd."""
    return f"{_p()}stalls:consumers"


def ops_history() -> str:
    """A list of compact snapshots, newest first, an hour long: the console's chart of queue depth."""
    return f"{_p()}ops:history"


def ops_snapshot() -> str:
    """JSON of the cluster-wide gauges the health_and_alerts loop computed last (the API serves it)."""
    return f"{_p()}ops:snapshot"


def ops_watch_since() -> str:
    """When health_and_alerts first ran (epoch seconds): a loop that never ran is stale only
    once it had 3 periods since then to run."""
    return f"{_p()}ops:since"


def alert_state() -> str:
    """Hash of the alert rules' state: alert key -> JSON (pending since, firing, last sent)."""
    return f"{_p()}alerts:state"


def api_latency() -> str:
    """Hash of each API process's recent p95 latency: "host:pid" -> JSON {p95_ms, n, at}."""
    return f"{_p()}api:latency"


def pool_trouble() -> str:
    """Hash of ledger pool waits and timeouts per process: process label -> JSON {waits,
    timeouts, last_at}; written by the process (runtime/pooltrouble.py), read by the alerts."""
    return f"{_p()}ops:pool_trouble"


def alerts_resolved() -> str:
    """List of recently resolved alerts (JSON, newest first, capped)."""
    return f"{_p()}alerts:resolved"


# --- kombu's keys (the broker) ---

PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)  # kombu's default steps; priority 0 lives in the plain list


def queue_lists(queue: str) -> list[str]:
    """The broker's lists of `queue`: the queue itself and its priority sub-queues."""
    return [queue_list_for(queue, step) for step in (0, *PRIORITY_STEPS)]


def queue_list_for(queue: str, kombu_priority: int) -> str:
    """The list kombu's `_q_for_pri` puts a message of this (kombu, 0 = first served) priority
    on: the highest step at or below it, the plain list below the first step."""
    prefix = get_settings().broker_key_prefix
    step = max((s for s in PRIORITY_STEPS if s <= kombu_priority), default=0)
    return f"{prefix}{queue}{PRIORITY_SEP}{step}" if step else prefix + queue


def unacked() -> str:
    """kombu's hash of prefetched, unacknowledged messages: tag -> [message, exchange, routing_key]."""
    return get_settings().broker_key_prefix + "unacked"
