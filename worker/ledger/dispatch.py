"""The dispatcher: which `held` jobs may start now, moved to `queued` for the outbox to publish.

A job the dispatcher starts (its type has a concurrency key or a rate limit, or its queue is in
MEDIC_DISPATCH_QUEUES) waits in the ledger, not in the broker: the broker's list only ever holds
what may start, so a job over a limit holds no worker slot and is never re-delivered in a loop.
A dispatch moves `held -> queued` (reason `dispatched`) for each job it picks:

- never for a paused queue (`queue_controls.paused`; the claim checks it too, so a message
  already sent when the pause committed starts nothing: it is parked `held` again);
- a job with a concurrency key only while fewer than its limit of the key's jobs are `queued`
  or `running` (the key's slots), counted under a lock of the key (`dialect.lock_keys`), so
  racing dispatchers of any queue or host never hand out one slot twice;
- a job with a rate limit only when its bucket's next token is due within the horizon, and one
  such job at a time per bucket (published with the token's time as its ETA); the claim takes
  the token (`take_token`), so starts are spaced by the interval whatever the dispatch did;
- on a dispatched queue, at most MEDIC_DISPATCH_WINDOW jobs published and not finished at once,
  and the next pick goes to the tenant with the fewest such jobs per its weight (max-min fair
  share), each tenant's jobs in `dispatch_rank` order (creation less priority x the aging step).

Dispatches run on three occasions: after an accept wrote held jobs, after a write ended or
requeued a dispatched job (its slot freed: `follow`, from commit_then_publish), and in the
dispatch_held loop (not_before reached, a resumed queue, anything a crash left behind). Each is
its own short transaction; the caller publishes what it returns.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import heapq
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from worker.clock import seconds, utcnow
from worker.ledger import dialect, transitions
from worker.ledger.models import jobs, queue_controls, rate_buckets
from worker.ledger.records import Job
from worker.ledger.states import JobState
from worker.settings import Settings, get_settings

HELD = JobState.HELD.value
LIVE = (JobState.QUEUED.value, JobState.RUNNING.value)
DISPATCHED = "dispatched"
MAX_TENANTS = 1000  # tenants one dispatch of a queue looks at
MAX_KEYS = 1000  # keys one run of the loop looks at
FEW_KEYS = 4  # up to this many keys are read one LIMIT query each, more in one statement
MAX_AHEAD = 100  # most jobs of one rate bucket sent ahead of their tokens (each with its ETA)
MAX_AHEAD = 100  # most jobs of one rate bucket sent ahead of their tokens (each with its ETA)


@dataclasses.dataclass
class Wake:
    """Why a queue is dispatched, so a dispatch reads only the lines that may have moved: keys
    whose slot freed or which got a job, rate buckets whose token may be taken again, and `scan`
    for every tenant's line (the loop, a resume; a dispatched queue always scans, for its window)."""

    keys: set[str] = dataclasses.field(default_factory=set)
    rate_keys: set[str] = dataclasses.field(default_factory=set)
    scan: bool = False

    @classmethod
    def everything(cls, keys: Collection[str] = ()) -> Wake:
        return cls(keys=set(keys), scan=True)


@dataclasses.dataclass(frozen=True, slots=True)
class QueueControl:
    queue: str
    paused: bool = False
    refuse_while_paused: bool = False
    paused_at: dt.datetime | None = None
    paused_by: str | None = None


def _controls() -> sa.Select[Any]:
    """`queue_controls` read as QueueControl's fields, in its order."""
    return sa.select(*(queue_controls.c[f.name] for f in dataclasses.fields(QueueControl)))


def control_of(conn: Connection, queue: str) -> QueueControl:
    row = conn.execute(_controls().where(queue_controls.c.queue == queue)).first()
    return QueueControl(queue) if row is None else QueueControl(*row)


def paused_queues(conn: Connection) -> dict[str, QueueControl]:
    rows = conn.execute(_controls().where(queue_controls.c.paused.is_(True)))
    return {row[0]: QueueControl(*row) for row in rows}


PAUSED_CACHE_S = 1.0
_paused_view: dict[str, Any] = {"until": 0.0, "queues": frozenset()}


def _is_paused(conn: Connection, queue: str) -> bool:
    """This process's view of the paused queues, at most PAUSED_CACHE_S old (a pause is fenced
    in the claim too, so a dispatch that misses a pause by a second only sends jobs that are
    parked `held` again when they arrive; `set_paused` updates its own process's view at once)."""
    if time.monotonic() >= _paused_view["until"]:
        _paused_view.update(queues=frozenset(paused_queues(conn)), until=time.monotonic() + PAUSED_CACHE_S)
    return queue in _paused_view["queues"]


def set_paused(
    conn: Connection, queue: str, *, paused: bool, actor: str, now: dt.datetime, refuse: bool = False
) -> QueueControl:
    """Pause (or resume) `queue`, durably: a row of `queue_controls`, read by every dispatch and
    every claim. Idempotent."""
    values: dict[str, Any] = {
        "paused": paused,
        "refuse_while_paused": refuse if paused else False,
        "paused_at": now if paused else None,
        "paused_by": actor if paused else None,
        "updated_at": now,
    }
    conn.execute(dialect.of(conn).insert_on_conflict(queue_controls, {"queue": queue, **values}, ["queue"], values))
    _paused_view["until"] = 0.0  # this process reads the pause afresh at its next dispatch
    return control_of(conn, queue)


def _due(now: dt.datetime) -> sa.ColumnElement[bool]:
    return sa.or_(jobs.c.not_before.is_(None), jobs.c.not_before <= now)


_TENANTS_WITH_HELD = sa.text(
    "WITH RECURSIVE t(tenant) AS ("
    " SELECT min(tenant) FROM jobs WHERE state = 'held' AND queue = :queue"
    " UNION ALL"
    " SELECT (SELECT min(j.tenant) FROM jobs j WHERE j.state = 'held' AND j.queue = :queue AND j.tenant > t.tenant)"
    " FROM t WHERE t.tenant IS NOT NULL"
    ") SELECT tenant FROM t WHERE tenant IS NOT NULL LIMIT :limit"
)
_QUEUES_WITH_HELD = sa.text(
    "WITH RECURSIVE q(queue) AS ("
    " SELECT min(queue) FROM jobs WHERE state = 'held'"
    " UNION ALL"
    " SELECT (SELECT min(j.queue) FROM jobs j WHERE j.state = 'held' AND j.queue > q.queue)"
    " FROM q WHERE q.queue IS NOT NULL"
    ") SELECT queue FROM q WHERE queue IS NOT NULL LIMIT :limit"
)
_KEYS_WITH_HELD = sa.text(
    "WITH RECURSIVE k(flow_key) AS ("
    " SELECT min(flow_key) FROM jobs WHERE state = 'held' AND flow_key IS NOT NULL"
    " UNION ALL"
    " SELECT (SELECT min(j.flow_key) FROM jobs j WHERE j.state = 'held' AND j.flow_key IS NOT NULL"
    " AND j.flow_key > k.flow_key) FROM k WHERE k.flow_key IS NOT NULL"
    ") SELECT flow_key FROM k WHERE flow_key IS NOT NULL LIMIT :limit"
)


def queues_with_held(conn: Connection, limit: int = 1000) -> list[str]:
    """Every queue with a held job (a skip scan of the held index: one probe per queue)."""
    return [str(q) for q in conn.execute(_QUEUES_WITH_HELD, {"limit": limit}).scalars()]


def keys_with_held(conn: Connection, limit: int = MAX_KEYS) -> list[tuple[str, str]]:
    """(key, queue of its first held job) of keys with held jobs, up to `limit`."""
    keys = [str(k) for k in conn.execute(_KEYS_WITH_HELD, {"limit": limit}).scalars()]
    if not keys:
        return []
    rows = conn.execute(
        sa.select(jobs.c.flow_key, sa.func.min(jobs.c.queue))
        .where(jobs.c.state == HELD, jobs.c.flow_key.in_(keys))
        .group_by(jobs.c.flow_key)
    )
    return [(str(k), str(q)) for k, q in rows]


def _heads(conn: Connection, where: Sequence[sa.ColumnElement[bool]], now: dt.datetime, n: int) -> list[Job]:
    stmt = (
        sa.select(jobs)
        .where(jobs.c.state == HELD, _due(now), *where)
        .order_by(jobs.c.dispatch_rank, jobs.c.created_at, jobs.c.id)
        .limit(n)
    )
    return [Job.of(row) for row in conn.execute(stmt)]


def _heads_by(
    conn: Connection, column: sa.Column[Any], values: Collection[str], queue: str, due_by: dt.datetime, n: int
) -> list[Job]:
    """The first `n` held jobs of each of `values` of `column` (keys, or rate buckets) in `queue`:
    a few keys (a job's end, a claim) one LIMIT read each down the column's held index, which
    stops at `n` however deep the key's line; many (an accept of a batch) in ONE statement
    (row_number over the same index)."""
    if not values:
        return []
    if len(values) <= FEW_KEYS:
        found: list[Job] = []
        for value in sorted(values):
            found += _heads(conn, [column == value, jobs.c.queue == queue], due_by, n)
        return found
    ranked = (
        sa.select(
            jobs,
            sa.func.row_number()
            .over(partition_by=column, order_by=(jobs.c.dispatch_rank, jobs.c.created_at, jobs.c.id))
            .label("place"),
        )
        .where(jobs.c.state == HELD, column.in_(sorted(values)), jobs.c.queue == queue, _due(due_by))
        .subquery()
    )
    rows = conn.execute(sa.select(*(ranked.c[c.name] for c in jobs.c)).where(ranked.c.place <= n))
    return [Job.of(row) for row in rows]


def _live_by_key(conn: Connection, keys: Collection[str]) -> Counter[str]:
    if not keys:
        return Counter()
    rows = conn.execute(
        sa.select(jobs.c.flow_key, sa.func.count())
        .where(jobs.c.flow_key.in_(sorted(keys)), jobs.c.state.in_(LIVE))
        .group_by(jobs.c.flow_key)
    )
    return Counter({str(k): int(n) for k, n in rows})


def _outstanding_by_rate(conn: Connection, keys: Collection[str]) -> Counter[str]:
    """Dispatched and not yet started jobs of each rate bucket (at most one is sent at a time)."""
    if not keys:
        return Counter()
    rows = conn.execute(
        sa.select(jobs.c.rate_key, sa.func.count())
        .where(jobs.c.rate_key.in_(sorted(keys)), jobs.c.state == JobState.QUEUED.value)
        .group_by(jobs.c.rate_key)
    )
    return Counter({str(k): int(n) for k, n in rows})


def _next_tokens(conn: Connection, keys: Collection[str]) -> dict[str, dt.datetime]:
    if not keys:
        return {}
    rows = conn.execute(sa.select(rate_buckets.c.key, rate_buckets.c.tat).where(rate_buckets.c.key.in_(sorted(keys))))
    return {str(k): tat for k, tat in rows}


def _live_by_tenant(conn: Connection, queue: str) -> Counter[str]:
    rows = conn.execute(
        sa.select(jobs.c.tenant, sa.func.count())
        .where(jobs.c.queue == queue, jobs.c.dispatch, jobs.c.state.in_(LIVE))
        .group_by(jobs.c.tenant)
    )
    return Counter({str(t): int(n) for t, n in rows})


@dataclasses.dataclass
class _Gate:
    """The limits one dispatch applies while it picks: slots per key and tokens per bucket."""

    now: dt.datetime
    horizon: dt.datetime
    key_live: Counter[str]
    rate_outstanding: Counter[str]
    tokens: dict[str, dt.datetime]

    def admit(self, job: Job) -> dt.datetime | bool | None:
        """False: it may not start now. Else its ETA (None: at once), with its slot and token
        counted as taken. A rate bucket's jobs are sent ahead of their tokens, each with the ETA
        of its own token (the bucket's next, then one interval apart), up to the horizon: the
        claim takes the token, so an ETA is a good guess, never a grant."""
        if job.flow_key is not None and self.key_live[job.flow_key] >= (job.flow_limit or 1):
            return False
        eta: dt.datetime | None = None
        if job.rate_key is not None:
            ahead = self.rate_outstanding[job.rate_key]
            if ahead >= MAX_AHEAD:
                return False
            first = max(t for t in (self.tokens.get(job.rate_key), self.now) if t is not None)
            slot = first + seconds(ahead * (job.rate_interval_s or 0.0))
            if job.not_before is not None and job.not_before > slot:
                slot = job.not_before
            if slot > self.horizon:
                return False
            eta = slot if slot > self.now else None
            self.rate_outstanding[job.rate_key] += 1
        if job.flow_key is not None:
            self.key_live[job.flow_key] += 1
        return eta


def dispatch(
    conn: Connection,
    queue: str,
    *,
    actor: str,
    now: dt.datetime,
    keys: Collection[str] = (),
    wake: Wake | None = None,
    budget: int | None = None,
    s: Settings | None = None,
) -> list[Job]:
    """Move the held jobs of `queue` that may start now to `queued`, in the caller's transaction
    (commit, then publish what it returns). `wake` says which lines to read (default: every
    tenant's, and the heads of `keys` first, wherever they are in the line)."""
    s = s or get_settings()
    wake = wake if wake is not None else Wake.everything(keys)
    if _is_paused(conn, queue):
        return []
    fair = s.dispatched(queue)
    budget = budget if budget is not None else s.control_batch_size
    live_tenants: Counter[str] = Counter()
    if fair:
        live_tenants = _live_by_tenant(conn, queue)
        room = s.dispatch_window - sum(live_tenants.values())
        if not wake.scan and not wake.keys and not wake.rate_keys and room < max(1, s.dispatch_window // 4):
            return []  # a job's end: the window is refilled a quarter at a time, not a job at a time
        budget = min(budget, room)
    if budget <= 0:
        return []
    horizon = now + seconds(2 * s.dispatch_period_seconds)
    per_group = min(budget, s.dispatch_scan)
    candidates = _candidates(conn, queue, wake, scan=fair or wake.scan, now=now, horizon=horizon, per_group=per_group)
    if not candidates:
        return []
    flow_keys = sorted({j.flow_key for j in candidates if j.flow_key is not None})
    dialect.of(conn).lock_keys(conn, flow_keys)  # counted below under the keys' locks
    rate_keys = {j.rate_key for j in candidates if j.rate_key is not None}
    gate = _Gate(
        now=now,
        horizon=horizon,
        key_live=_live_by_key(conn, flow_keys),
        rate_outstanding=_outstanding_by_rate(conn, rate_keys),
        tokens=_next_tokens(conn, rate_keys),
    )
    picked = _pick_fair(candidates, gate, live_tenants, budget, s) if fair else _pick_in_line(candidates, gate, budget)
    picks = [(job.id, transitions.new_delivery_id(), eta) for job, eta in picked]
    return dialect.of(conn).start_held(conn, picks, actor=actor, now=now)


def _candidates(
    conn: Connection, queue: str, wake: Wake, *, scan: bool, now: dt.datetime, horizon: dt.datetime, per_group: int
) -> list[Job]:
    """The heads of the lines `wake` names: each key's first held jobs, each rate bucket's first
    one, and with `scan` each tenant's (tenants found by a skip scan, so a tenant with a million
    held jobs costs one probe like any other)."""
    seen: dict[uuid.UUID, Job] = {}
    for job in _heads_by(conn, jobs.c.flow_key, wake.keys, queue, now, per_group):
        seen.setdefault(job.id, job)
    # a bucket's jobs parked until its token are sent ahead, with their ETAs
    for job in _heads_by(conn, jobs.c.rate_key, wake.rate_keys, queue, horizon, MAX_AHEAD):
        seen.setdefault(job.id, job)
    if not scan:
        return sorted(seen.values(), key=_line_order)
    tenants = [str(t) for t in conn.execute(_TENANTS_WITH_HELD, {"queue": queue, "limit": MAX_TENANTS}).scalars()]
    for tenant in tenants:
        for job in _heads(conn, [jobs.c.queue == queue, jobs.c.tenant == tenant], now, per_group):
            seen.setdefault(job.id, job)
    return sorted(seen.values(), key=_line_order)


def _line_order(job: Job) -> tuple[dt.datetime, dt.datetime, str]:
    return (job.dispatch_rank or job.created_at, job.created_at, str(job.id))


def _pick_in_line(candidates: Sequence[Job], gate: _Gate, budget: int) -> list[tuple[Job, dt.datetime | None]]:
    picked: list[tuple[Job, dt.datetime | None]] = []
    for job in candidates:
        if len(picked) >= budget:
            break
        eta = gate.admit(job)
        if eta is not False:
            picked.append((job, eta if isinstance(eta, dt.datetime) else None))
    return picked


def _pick_fair(
    candidates: Sequence[Job], gate: _Gate, live: Counter[str], budget: int, s: Settings
) -> list[tuple[Job, dt.datetime | None]]:
    """Max-min fair share: each pick goes to the tenant with the fewest jobs out (published or
    running) per its weight, the earliest rank breaking ties; a tenant whose next job is over a
    limit passes to its next one."""
    lines: dict[str, list[Job]] = defaultdict(list)
    for job in candidates:  # already in line order
        lines[job.tenant].append(job)
    out = Counter(live)
    heap = [(out[t] / s.tenant_weight(t), _line_order(line[0]), t) for t, line in lines.items()]
    heapq.heapify(heap)
    position = dict.fromkeys(lines, 0)
    picked: list[tuple[Job, dt.datetime | None]] = []
    while heap and len(picked) < budget:
        _, _, tenant = heapq.heappop(heap)
        line = lines[tenant]
        while position[tenant] < len(line):
            job = line[position[tenant]]
            position[tenant] += 1
            eta = gate.admit(job)
            if eta is not False:
                picked.append((job, eta if isinstance(eta, dt.datetime) else None))
                out[tenant] += 1
                break
        if position[tenant] < len(line):
            heapq.heappush(heap, (out[tenant] / s.tenant_weight(tenant), _line_order(line[position[tenant]]), tenant))
    return picked


def slots_freed(rows: Iterable[Job | None]) -> dict[str, Wake]:
    """Queue -> what to dispatch after a write left these rows: a dispatched job that is no
    longer out (it ended, or is held again) freed its key's slot (and its tenant's share of a
    dispatched queue); a held one (new, or again) may start itself: its key's line, its rate's,
    or (neither) every line of its queue."""
    todo: dict[str, Wake] = defaultdict(Wake)
    for row in rows:
        if row is None or not (row.dispatch or row.state == HELD) or row.state in LIVE:
            continue
        wake = todo[row.queue]
        if row.flow_key is not None:
            wake.keys.add(row.flow_key)
        if row.state == HELD and row.rate_key is not None:
            wake.rate_keys.add(row.rate_key)
        if row.state == HELD and row.flow_key is None and row.rate_key is None:
            wake.scan = True
    return dict(todo)


def take_token(conn: Connection, key: str, interval_s: float, now: dt.datetime | None = None) -> dt.datetime | None:
    """Take the bucket's token for a start at `now`, on its locked row (GCRA with a tolerance of
    half an interval: granted when its theoretical arrival time `tat` is at most half an
    interval ahead, which then moves to max(tat, now) + interval). Two starts of a bucket are
    never closer than half an interval, and any window of w seconds holds at most
    floor(w x rate + 1/2) + 1 of them: for w = 1 and a whole rate, rate + 1, the bound of no
    tolerance at all. The tolerance absorbs an ETA's jitter. None: granted; else when the next
    token is due. `now` None: the clock is read once the row is locked (a claim's time read
    before a wait for the lock would look early to the token its predecessor just moved)."""
    tolerance = seconds(interval_s / 2)
    conn.execute(
        dialect.of(conn).insert_on_conflict(
            rate_buckets, {"key": key, "tat": now or utcnow(), "interval_s": interval_s}, ["key"]
        )
    )
    tat: dt.datetime = conn.execute(
        sa.select(rate_buckets.c.tat).where(rate_buckets.c.key == key).with_for_update()
    ).scalar_one()
    now = now or utcnow()
    if tat - tolerance > now:
        return tat - tolerance
    conn.execute(
        sa.update(rate_buckets)
        .where(rate_buckets.c.key == key)
        .values(tat=max(tat, now) + seconds(interval_s), interval_s=interval_s)
    )
    return None


def park(
    conn: Connection,
    job_id: uuid.UUID,
    delivery_id: uuid.UUID,
    *,
    reason: str,
    actor: str,
    now: dt.datetime,
    not_before: dt.datetime | None = None,
    detail: str | None = None,
) -> Job | None:
    """queued -> held for a delivery that may not start (its queue is paused, its rate had no
    token): the message is acked and the dispatcher sends it again when it may. A job of the fast
    path keeps its place in line (rank: its creation)."""
    rank = sa.func.coalesce(jobs.c.dispatch_rank, jobs.c.created_at)
    return transitions.transition(
        conn,
        job_id,
        JobState.QUEUED,
        JobState.HELD,
        actor=actor,
        reason=reason,
        now=now,
        where=[jobs.c.delivery_id == delivery_id],
        values={"published_at": None, "not_before": not_before, "dispatch_rank": rank},
        detail=detail,
    )
