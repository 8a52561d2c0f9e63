"""medic on RabbitMQ beside medic on Redis, in one run, each against plain Celery on the same broker.

Two comparisons, the end to end of bench/throughput.py (events off) and the SIGKILL recovery of
bench/recovery.py, each run on both brokers: round after round, the four sides in turn (medic on
Redis, plain Celery on Redis, medic on RabbitMQ, plain Celery on RabbitMQ), the load recorded
before every round, empty ledger and queues before every side. Plain Celery on RabbitMQ gets the
settings medic uses there (quorum queues, publisher confirms: bench/plain.py `config`); on both
brokers both sides run prefork with prefetch 1, acks_late, no task events. Each run makes two
RabbitMQ vhosts, `<vhost-prefix><run>m` (medic) and `<vhost-prefix><run>p` (plain), with
`rabbitmqctl` (as root), and deletes them at the end. Prints one JSON object.

    .venv/bin/python -m bench.brokers > docs/bench/brokers.json      # ~4 min
    .venv/bin/python -m bench.brokers --quick > /tmp/brokers.json    # ~1 min: a smoke test
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import amqp.exceptions
import kombu
import redis
import sqlalchemy as sa
from celery import Celery

from bench import common, recovery, throughput
from bench.common import MedicRun

BROKERS = ("redis", "rabbitmq")
AMQP = "amqp://guest:guest@127.0.0.1:5672/{vhost}"


@dataclass(frozen=True)
class Sizes:
    """How much each comparison does: FULL for the published figures, QUICK for a smoke test."""

    e2e_rounds: int
    e2e_jobs: int
    recovery_rounds: int
    recovery_jobs: int
    job_seconds: float  # each recovery job sleeps this long
    recovery_cap_s: float  # the longest wait for one recovery side


FULL = Sizes(3, 2000, 1, 5, 8.0, 60.0)
QUICK = Sizes(1, 200, 1, 2, 6.0, 30.0)


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@contextlib.contextmanager
def vhosts(*names: str) -> Iterator[None]:
    """RabbitMQ vhosts of this run, open to guest; deleted at the end however it ends."""
    try:
        for name in names:
            rabbitmqctl("add_vhost", name)
            rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield
    finally:
        for name in names:
            with contextlib.suppress(subprocess.SubprocessError):
                rabbitmqctl("delete_vhost", name)


class Brokers:
    """Which broker medic (in this process and in the processes it starts) and plain Celery use."""

    def __init__(self, medic: MedicRun, vhost_prefix: str) -> None:
        self.medic = medic
        self.vhosts = {"medic": f"{vhost_prefix}{medic.run}m", "plain": f"{vhost_prefix}{medic.run}p"}
        self.medic_url = {"redis": "", "rabbitmq": AMQP.format(vhost=self.vhosts["medic"])}
        self.plain_url = {"redis": common.REDIS_URL, "rabbitmq": AMQP.format(vhost=self.vhosts["plain"])}
        plain = medic.plain()  # its module app: Redis, on the run's prefix
        rabbit = Celery("plain-rabbitmq", broker=self.plain_url["rabbitmq"])
        rabbit.conf.update(plain.config(self.plain_url["rabbitmq"]))
        self.plain_app = {"redis": plain.celery, "rabbitmq": rabbit}

    def use(self, broker: str) -> None:
        """Point this process's medic, and every process started from now on, at `broker`."""
        from worker.broker import rabbitmq
        from worker.broker.celery_app import reconfigure
        from worker.settings import reset_settings

        for env in (os.environ, self.medic.procs.env):
            env["MEDIC_BROKER_URL"] = self.medic_url[broker]
            env["BENCH_BROKER_URL"] = self.plain_url[broker]
        reset_settings()
        reconfigure()  # closes every kombu pool of this process, plain Celery's too:
        for app in self.plain_app.values():
            app._after_fork()  # type: ignore[attr-defined]  # ... which then opens new ones
        rabbitmq.reset()

    def purge(self, queue: str) -> None:
        """Empty `queue` in both vhosts (a missing queue is empty)."""
        for url in (self.medic_url["rabbitmq"], self.plain_url["rabbitmq"]):
            with kombu.Connection(url) as conn, contextlib.suppress(amqp.exceptions.NotFound):
                conn.default_channel.queue_purge(queue)

    def version(self) -> str:
        with kombu.Connection(self.medic_url["rabbitmq"]) as conn:
            conn.connect()
            return str(conn.connection.server_properties.get("version", "?"))


# ----------------------------------------------------------------------------------- e2e


class E2E(throughput.Bench):
    """throughput.py's end to end, one worker per side and broker, started once and kept."""

    def __init__(self, medic: MedicRun, brokers: Brokers, jobs: int) -> None:
        sizes = throughput.FULL
        super().__init__(throughput.Sizes(**{**asdict(sizes), "e2e_jobs": jobs}), medic)
        self.brokers = brokers

    def reset(self) -> None:
        super().reset()
        self.brokers.purge(throughput.QUEUE)

    def plain_drain(self, broker: str, n: int) -> dict[str, Any]:
        """throughput.plain_drain with the app of `broker`: batches of the same size, each in one
        producer.batch() (one pipeline on Redis; kombu publishes one by one on RabbitMQ, each
        confirmed)."""
        app, b, tag = self.brokers.plain_app[broker], self.sizes.batch, os.urandom(6).hex()
        done_key, at_key = f"{self.plain_prefix}done:{tag}", f"{self.plain_prefix}done_at:{tag}"
        started = time.time()
        for i in range(0, n, b):
            with app.producer_or_acquire() as producer, producer.batch(max_size=1000):
                for _ in range(min(b, n - i)):
                    app.send_task("plain.noop_done", (tag,), queue=throughput.QUEUE, producer=producer)
        common.poll_until(lambda: int(self.r.get(done_key) or 0) >= n, self.sizes.e2e_cap_s)
        times = [float(t) for t in self.r.lrange(at_key, 0, -1)]
        self.r.delete(done_key, at_key)
        return throughput.drained(n, len(times), 0, started, max(times) if times else None)


def e2e(medic: MedicRun, brokers: Brokers, sizes: Sizes) -> dict[str, Any]:
    """Four sides (medic and plain on each broker), a warm-up of each, then rounds of all four."""
    from worker.ops.processes import worker_cmd

    bench = E2E(medic, brokers, sizes.e2e_jobs)
    c, q = bench.sizes.concurrency, throughput.QUEUE
    sides: dict[str, Callable[[bool], dict[str, Any]]] = {}
    for broker in BROKERS:
        brokers.use(broker)
        common.ready(bench.procs.start(f"medic-{broker}", worker_cmd(q, c, f"medic-{broker}")))
        common.start_plain_worker(bench.procs, f"plain-{broker}", q, c)

        def medic_side(warm_up: bool, broker: str = broker) -> dict[str, Any]:
            brokers.use(broker)
            bench.reset()
            return throughput.medic_drain(bench, sizes.e2e_jobs // (10 if warm_up else 1))

        def plain_side(warm_up: bool, broker: str = broker) -> dict[str, Any]:
            brokers.use(broker)
            bench.reset()
            return bench.plain_drain(broker, sizes.e2e_jobs // (10 if warm_up else 1))

        sides[f"{broker}.medic"], sides[f"{broker}.plain"] = medic_side, plain_side
    for side in sides.values():
        side(True)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    loads = []
    for _ in range(sizes.e2e_rounds):
        loads.append(common.load_check())
        for name, side in sides.items():
            runs[name].append(side(False))
    bench.procs.stop_all()
    out: dict[str, Any] = {
        "unit": "jobs/s from the first publish to the last completion the worker child records",
        "jobs_per_run": sizes.e2e_jobs,
        "publish": f"batches of {bench.sizes.batch}: medic enqueue_many, plain producer.batch()",
        "workers": f"one a side and broker, prefork -c {c}, prefetch 1, acks_late, no -E",
        "load_before_each_round": loads,
    }
    for broker in BROKERS:
        per: dict[str, Any] = {}
        for side in ("medic", "plain"):
            rs = runs[f"{broker}.{side}"]
            per[side] = common.summary([r["jobs_per_s"] for r in rs if r["jobs_per_s"]])
            per[side]["all_completed"] = all(r["completed"] == r["of"] for r in rs)
            per[side]["runs"] = rs
        per["ratio_medic_vs_plain"] = common.ratio(per["medic"], per["plain"], 0.8)
        out[broker] = per
    out["rabbitmq_vs_redis_medic_median"] = _over(out, "medic")
    out["rabbitmq_vs_redis_plain_median"] = _over(out, "plain")
    return out


def _over(out: dict[str, Any], side: str) -> float | None:
    a, b = out["rabbitmq"][side]["median"], out["redis"][side]["median"]
    return round(a / b, 3) if a and b else None


# ------------------------------------------------------------------------------ recovery


def recover(medic: MedicRun, brokers: Brokers, sizes: Sizes) -> dict[str, Any]:
    """recovery.py's two sides on each broker, round after round."""
    n, secs, cap = sizes.recovery_jobs, sizes.job_seconds, sizes.recovery_cap_s
    out: dict[str, Any] = {"jobs": n, "job_seconds": secs, "cap_s": cap, "load_before_each_round": []}
    runs: dict[str, dict[str, list[Any]]] = {b: {"medic": [], "plain_celery": []} for b in BROKERS}
    for _ in range(sizes.recovery_rounds):
        out["load_before_each_round"].append(common.load_check())
        for broker in BROKERS:
            brokers.use(broker)
            clear(medic, brokers)
            runs[broker]["medic"].append(recovery.bench_medic(medic, n, secs, cap))
            clear(medic, brokers)
            plain = recovery.bench_plain(medic, n, secs, cap, brokers.plain_app[broker])
            medic.procs.stop_all()
            if broker == "rabbitmq":
                plain["settings"] = {"acks_late": True, "reject_on_worker_lost": True,
                                     "requeue": "RabbitMQ returns a closed connection's unacked messages"}  # fmt: skip
            runs[broker]["plain_celery"].append(plain)
    for broker in BROKERS:
        out[broker] = runs[broker]
        for side in ("medic", "plain_celery"):
            done = [r["kill_to_succeeded_s"]["median"] for r in runs[broker][side] if r.get("kill_to_succeeded_s")]
            # the median over rounds of each round's median job
            out[broker][f"{side}_kill_to_succeeded_median_s"] = round(statistics.median(done), 2) if done else None
    return out


def clear(medic: MedicRun, brokers: Brokers) -> None:
    """An empty ledger and empty recovery queues."""
    from worker.ledger import db

    with db.begin() as conn:
        conn.execute(sa.text("TRUNCATE jobs CASCADE"))
    r = redis.Redis.from_url(common.REDIS_URL)
    for prefix in (medic.broker_prefix, medic.plain_prefix):
        for key in r.scan_iter(match=f"{prefix}{recovery.QUEUE}*", count=1000):
            r.delete(key)
    brokers.purge(recovery.QUEUE)


def main() -> None:
    args = common.options(__doc__, quick=False, only="e2e,recovery", vhost_prefix="bench")
    only, sizes = set(args.only.split(",")), QUICK if args.quick else FULL
    started = time.monotonic()
    report: dict[str, Any] = {
        **common.header("brokers"),
        "mode": "quick" if args.quick else "full",
        "statistic": "median of the alternating runs (best also given); ratios = medic / plain on one broker",
        "sizes": asdict(sizes),
    }
    with MedicRun("production", extra_env=throughput.ROOM_FOR_ONE_MEASUREMENT) as medic:
        brokers = Brokers(medic, args.vhost_prefix)
        with vhosts(*brokers.vhosts.values()):
            report["brokers"] = {
                "redis": f"{common.REDIS_URL}, prefixes {medic.broker_prefix} (medic), {medic.plain_prefix} (plain)",
                "rabbitmq": f"RabbitMQ {brokers.version()} on 127.0.0.1:5672, vhosts {brokers.vhosts}",
                "rabbitmq_settings": "both sides: quorum queues, publisher confirms, persistent messages",
            }
            try:
                if "e2e" in only:
                    report["end_to_end"] = e2e(medic, brokers, sizes)
                if "recovery" in only:
                    report["recovery"] = recover(medic, brokers, sizes)
            finally:
                medic.procs.stop_all()
    report |= {"logs": str(medic.log_dir), "elapsed_s": round(time.monotonic() - started, 1)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
