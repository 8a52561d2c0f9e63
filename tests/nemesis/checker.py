"""The nemesis checker: pure functions over the histories recorded outside the system (the jobs'
lines on their hosts, the client's answers, the nemesis's faults) and a read of the ledger.

It reports:
- lost: jobs the API accepted (a 202 or 200 answer) that are not `succeeded` at the end;
- duplicate finishes: jobs with more than one terminal event (succeeded/dead/cancelled) in the ledger;
- overlaps: pairs of executions of one job whose live intervals intersect, where an execution's
  interval runs from its `start` line to its last line, minus the windows its pid was paused
  (a stopped process does nothing, so paused time is not live);
- API answers other than 200/202/429/503 (5xx but 503 are errors), connection errors apart;
- kill-to-rerun: for each execution live when a kill, pause or partition of its host (or pid)
  began, the seconds from the fault's start to the next execution of the same job.
"""

from __future__ import annotations

import itertools
import json
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TERMINAL = frozenset({"succeeded", "dead", "cancelled"})
ACCEPTED = frozenset({200, 202})
EXPECTED_ANSWERS = frozenset({200, 202, 429, 503})
CUTTING = frozenset({"kill_host", "pause_host", "pause_child", "partition"})

Window = tuple[float, float]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every whole line of a JSONL file (a line cut short by a SIGKILL mid-write is skipped)."""
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


@dataclass
class Execution:
    """One run of a job's function in one process, as its own lines tell it."""

    job: str
    delivery: str
    host: str
    pid: int
    start: float
    last: float
    ended: bool = False
    fenced: bool = False
    lines: int = 1

    def name(self) -> str:
        return f"{self.host}:{self.pid}:{self.delivery[:8]}"


def executions(lines: Iterable[Mapping[str, Any]]) -> list[Execution]:
    """Group history lines into executions: per (host, pid, job, delivery), a `start` line opens
    a new execution and every later line of that key extends it."""
    open_: dict[tuple[str, int, str, str], Execution] = {}
    out: list[Execution] = []
    for line in sorted(lines, key=lambda entry: float(entry["t"])):
        key = (str(line["host"]), int(line["pid"]), str(line["job"]), str(line["delivery"]))
        t = float(line["t"])
        if line["event"] == "start" or key not in open_:
            open_[key] = Execution(key[2], key[3], key[0], key[1], t, t)
            out.append(open_[key])
            if line["event"] == "start":
                continue
        e = open_[key]
        e.lines += 1
        if line["event"] == "fenced":
            # The job's note that still_owner() said no: written after ownership was lost, by
            # design, and no side effect of the job. It marks the execution, it does not extend it.
            e.fenced = True
            continue
        e.last = max(e.last, t)
        e.ended = e.ended or line["event"] == "end"
    return out


def pause_windows(faults: Iterable[Mapping[str, Any]]) -> dict[int, list[Window]]:
    """pid -> the windows it was stopped (SIGSTOP .. SIGCONT), from every fault's `pauses`."""
    out: dict[int, list[Window]] = defaultdict(list)
    for fault in faults:
        for p in fault.get("pauses", []):
            out[int(p["pid"])].append((float(p["stop"]), float(p["cont"])))
    return out


def subtract(span: Window, holes: Iterable[Window]) -> list[Window]:
    """`span` minus every window in `holes`: the pieces left, in order."""
    pieces = [span]
    for h0, h1 in sorted(holes):
        nxt: list[Window] = []
        for a, b in pieces:
            if h1 <= a or h0 >= b:
                nxt.append((a, b))
                continue
            if a < h0:
                nxt.append((a, h0))
            if h1 < b:
                nxt.append((h1, b))
        pieces = nxt
    return pieces


def live(e: Execution, pauses: Mapping[int, Sequence[Window]]) -> list[Window]:
    """The live pieces of an execution: [start, last line] less the windows its pid was paused."""
    return subtract((e.start, e.last), pauses.get(e.pid, ()))


def intersection(a: Sequence[Window], b: Sequence[Window]) -> float:
    """Seconds two sets of pieces have in common."""
    return sum(max(0.0, min(a1, b1) - max(a0, b0)) for a0, a1 in a for b0, b1 in b)


@dataclass
class Overlap:
    job: str
    first: str  # host:pid:delivery prefix
    second: str
    seconds: float
    deliveries: tuple[str, str] = ("", "")


def overlaps(runs: Sequence[Execution], pauses: Mapping[int, Sequence[Window]]) -> list[Overlap]:
    """Every pair of executions of one job that were live at the same time (for any time > 0)."""
    by_job: dict[str, list[Execution]] = defaultdict(list)
    for e in runs:
        by_job[e.job].append(e)
    found = []
    for job, job_runs in by_job.items():
        pieces = [(e, live(e, pauses)) for e in sorted(job_runs, key=lambda r: r.start)]
        for (a, pa), (b, pb) in itertools.combinations(pieces, 2):
            if (shared := intersection(pa, pb)) > 0:
                found.append(Overlap(job, a.name(), b.name(), round(shared, 3), (a.delivery, b.delivery)))
    return found


@dataclass
class Answers:
    """What the API answered the client, and which jobs it accepted."""

    accepted: dict[str, float] = field(default_factory=dict)  # job id -> first accepting answer's time
    statuses: Counter[str] = field(default_factory=Counter)
    connection_errors: int = 0
    unexpected: list[dict[str, Any]] = field(default_factory=list)  # 500s and other codes the API must not send
    submits: int = 0
    gave_up: int = 0


def answers(client_lines: Iterable[Mapping[str, Any]]) -> Answers:
    out = Answers()
    keys: set[str] = set()
    for line in client_lines:
        if line.get("gave_up"):
            out.gave_up += 1
            continue
        keys.add(str(line["key"]))
        status = line.get("status")
        if status is None:
            out.connection_errors += 1
            out.statuses["connection_error"] += 1
            continue
        out.statuses[str(status)] += 1
        if status in ACCEPTED and line.get("job"):
            out.accepted.setdefault(str(line["job"]), float(line["answered"]))
        elif status not in EXPECTED_ANSWERS:
            out.unexpected.append(dict(line))
    out.submits = len(keys)
    return out


@dataclass(frozen=True)
class LedgerEvent:
    job: str
    to_state: str
    reason: str
    delivery: str
    attempt: int
    at: float


def lost(accepted: Iterable[str], states: Mapping[str, str]) -> list[str]:
    """Accepted jobs not `succeeded` in the ledger (missing rows included)."""
    return sorted(j for j in accepted if states.get(j) != "succeeded")


def duplicate_finishes(events: Iterable[LedgerEvent]) -> dict[str, int]:
    """job -> its number of terminal events, for every job with more than one."""
    n = Counter(e.job for e in events if e.to_state in TERMINAL)
    return {job: count for job, count in n.items() if count > 1}


@dataclass
class Recovery:
    kind: str
    host: str
    job: str
    fault_start: float
    rerun_start: float

    @property
    def seconds(self) -> float:
        return self.rerun_start - self.fault_start


def _hit(fault: Mapping[str, Any], e: Execution) -> bool:
    if fault["kind"] == "pause_child":
        return e.pid in {int(p) for p in fault.get("pids", [])}
    return e.host == str(fault["host"])


def recoveries(runs: Sequence[Execution], faults: Iterable[Mapping[str, Any]]) -> tuple[list[Recovery], int]:
    """(reruns, cut executions that were not re-run: they resumed and finished in place). An
    execution is cut by a kill, pause or partition of its host (or its pid) if it was live when
    the fault began: started before, and not ended before."""
    by_job: dict[str, list[Execution]] = defaultdict(list)
    for e in runs:
        by_job[e.job].append(e)
    found, in_place = [], 0
    for fault in faults:
        if fault["kind"] not in CUTTING:
            continue
        t0 = float(fault["start"])
        for e in runs:
            if not (_hit(fault, e) and e.start <= t0 and not (e.ended and e.last <= t0)):
                continue
            later = [r.start for r in by_job[e.job] if r.start > t0 and r is not e]
            if later:
                found.append(Recovery(fault["kind"], str(fault["host"]), e.job, t0, min(later)))
            else:
                in_place += 1
    return found, in_place


def distribution(values: Sequence[float]) -> dict[str, float | int | None]:
    """count, p50, p95 (nearest rank) and max, in seconds."""
    if not values:
        return {"count": 0, "p50": None, "p95": None, "max": None}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "count": len(ordered),
        "p50": round(statistics.median(ordered), 2),
        "p95": round(p95, 2),
        "max": round(ordered[-1], 2),
    }


def check(
    history: Sequence[Mapping[str, Any]],
    client: Sequence[Mapping[str, Any]],
    faults: Sequence[Mapping[str, Any]],
    states: Mapping[str, str],
    events: Sequence[LedgerEvent],
) -> dict[str, Any]:
    """The whole verdict as one JSON-ready dict (the figures the test asserts and the bench writes)."""
    runs = executions(history)
    pauses = pause_windows(faults)
    said = answers(client)
    gone = lost(said.accepted, states)
    twice = duplicate_finishes(e for e in events if e.job in said.accepted)
    both = overlaps(runs, pauses)
    rec, in_place = recoveries(runs, faults)
    claimed = {e.delivery: e.attempt for e in events if e.reason == "claimed"}
    per_kind: dict[str, list[float]] = defaultdict(list)
    for r in rec:
        per_kind[r.kind].append(r.seconds)
    return {
        "jobs": {
            "submitted": said.submits,
            "accepted": len(said.accepted),
            "succeeded": sum(1 for j in said.accepted if states.get(j) == "succeeded"),
            "lost": len(gone),
            "lost_ids": gone[:50],
            "gave_up_submits": said.gave_up,
        },
        "executions": len(runs),
        "duplicate_finishes": len(twice),
        "duplicate_finish_ids": dict(list(twice.items())[:50]),
        "history_finished_twice": sum(1 for n in Counter(e.job for e in runs if e.ended).values() if n > 1),
        "overlaps": len(both),
        # the attempt of each side, from the ledger's claim of its delivery (the job may not know it)
        "overlap_pairs": [{**vars(o), "attempts": [claimed.get(d) for d in o.deliveries]} for o in both[:50]],
        "api": {
            "statuses": dict(said.statuses),
            "connection_errors": said.connection_errors,
            "unexpected": len(said.unexpected),
            "server_errors_500": sum(1 for u in said.unexpected if u.get("status") == 500),
            "unexpected_examples": said.unexpected[:10],
        },
        "recovery_s": {
            "overall": distribution([r.seconds for r in rec]),
            "by_fault": {kind: distribution(v) for kind, v in sorted(per_kind.items())},
            "cut_not_rerun": in_place,
            "points": [
                {"kind": r.kind, "host": r.host, "at": r.fault_start, "seconds": round(r.seconds, 2)} for r in rec
            ],
        },
    }
