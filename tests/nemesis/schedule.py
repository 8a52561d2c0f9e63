"""The nemesis's schedule: which fault, on which host, when and for how long, drawn from a seed.

Pure: the same seed, kinds and length give the same schedule, so a failing run is replayed with
its seed (NEMESIS_SEED). Faults may run at the same time on different hosts, at most two at
once; one host never has two faults at once; the data host's two restarts never coincide; a
rolling restart touches every worker host."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

WORKERS = ("w1", "w2", "w3")
KINDS = (
    "partition", "latency", "pause_child", "pause_host", "kill_host", "restart_redis", "restart_pg", "rolling_restart",
)  # fmt: skip
MAX_AT_ONCE = 2


@dataclass
class Planned:
    kind: str
    host: str
    at: float  # seconds after the schedule starts
    seconds: float  # how long the fault holds (for kill_host: until the restart)
    params: dict[str, Any] = field(default_factory=dict)

    def hosts(self) -> set[str]:
        if self.kind == "rolling_restart":
            return set(WORKERS)
        if self.kind in ("restart_redis", "restart_pg"):
            return {"data"}
        return {self.host}

    def end(self) -> float:
        return self.at + self.seconds

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def draw(kind: str, rng: random.Random, lease_s: float) -> Planned:
    """One fault of `kind`, its host and length drawn from `rng`. Pauses last past the lease (so
    recovery acts while the paused process is stopped); partitions span from shorter to longer."""
    worker = rng.choice(WORKERS)
    if kind == "partition":
        host = rng.choice([*WORKERS, "api", "control"])
        return Planned(kind, host, 0, round(rng.uniform(0.6 * lease_s, 1.8 * lease_s), 1), {"peer": "data"})
    if kind == "latency":
        return Planned(kind, worker, 0, round(rng.uniform(8, 15), 1), {"ms": 100, "jitter_ms": 50})
    if kind in ("pause_child", "pause_host"):
        return Planned(kind, worker, 0, round(1.5 * lease_s + rng.uniform(2, 6), 1))
    if kind == "kill_host":
        return Planned(kind, worker, 0, round(rng.uniform(3, 8), 1))
    if kind == "restart_redis":
        return Planned(kind, "data", 0, round(rng.uniform(1, 3), 1))
    if kind == "restart_pg":
        return Planned(kind, "data", 0, round(rng.uniform(1, 4), 1), {"mode": rng.choice(["fast", "immediate"])})
    if kind == "rolling_restart":
        return Planned(kind, "w1,w2,w3", 0, 25.0)  # a budget: each worker SIGTERMed, waited for, started
    raise ValueError(f"unknown fault kind {kind!r}")


def _fits(p: Planned, placed: list[Planned]) -> bool:
    clash = [q for q in placed if q.at < p.end() and p.at < q.end()]
    if any(q.hosts() & p.hosts() for q in clash):
        return False
    # never more than MAX_AT_ONCE at any instant: check at each start inside p's window
    points = [p.at] + [q.at for q in clash if p.at <= q.at < p.end()]
    return all(sum(1 for q in clash if q.at <= t < q.end()) + 1 <= MAX_AT_ONCE for t in points)


SPACING_S = 35.0  # with `fill`: one fault per this many seconds of schedule, on average


def plan(
    seed: int, length_s: float, lease_s: float, kinds: tuple[str, ...] = KINDS, fill: bool = False
) -> list[Planned]:
    """Every kind once (in a seeded order), then, with `fill`, faults of random kinds up to one
    per SPACING_S seconds. Placement is random within the length where it fits; one of the first
    round that fits nowhere goes after the last (so the schedule may run a little past `length_s`)."""
    rng = random.Random(seed)
    order = list(kinds)
    rng.shuffle(order)
    placed: list[Planned] = []
    misses = 0
    target = max(len(order), int(length_s / SPACING_S)) if fill else len(order)
    while order or (len(placed) < target and misses < 50):
        kind = order.pop(0) if order else rng.choice(kinds)
        p = draw(kind, rng, lease_s)
        for _ in range(200):
            p.at = round(rng.uniform(2, max(2.0, length_s - p.seconds)), 1)
            if _fits(p, placed):
                placed.append(p)
                break
        else:
            if len(placed) >= len(kinds):
                misses += 1
                continue
            p.at = round(max([q.end() for q in placed] + [2.0]) + 1, 1)
            placed.append(p)
    return sorted(placed, key=lambda q: q.at)
