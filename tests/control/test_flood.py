"""A flood at five times the drain rate: the queue stays bounded, every refusal says when to
come back, everything accepted runs, and admission settles without flapping."""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import KeyFactory
from worker.broker import inspect
from worker.ledger import db
from worker.ledger.models import control_decisions, jobs
from worker.testing.processes import Processes, wait_for

HIGH, LOW = 50, 25
BOUND = HIGH + max(HIGH // 10, 20)  # the gate's promise: at most max(10 %, 20 jobs) over high
FLOOD_S = 20.0
JOB_S = 0.2  # one worker slot: a drain rate of about 5 jobs/s
THREADS, PACE_S = 6, 0.15  # about 40 submissions/s offered, far more than 5x the drain rate


class Flood:
    """Bounded clients on 127.0.0.1: senders at a fixed pace, and a sampler of depth every 200 ms
    that also slips in a critical job whenever the queue is shedding."""

    def __init__(self, url: str, headers: dict[str, str], queue: str) -> None:
        self.url, self.headers, self.queue = url, headers, queue
        self.accepted: list[str] = []
        self.refusals: list[httpx.Response] = []
        self.critical_while_shedding: list[int] = []
        self.depths: list[int] = []
        self.stop = threading.Event()

    def _body(self, priority: int = 0) -> dict[str, object]:
        return {"type": "examples.sleep", "args": {"seconds": JOB_S}, "queue": self.queue, "priority": priority}

    def send(self) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=30) as client:
            deadline = time.monotonic() + FLOOD_S
            for _ in range(int(FLOOD_S / PACE_S) + 1):  # bounded in count and in time
                if time.monotonic() > deadline:
                    return
                response = client.post("/jobs", json=self._body())
                if response.status_code == 202:
                    self.accepted.append(response.json()["id"])
                else:
                    assert response.status_code == 429, response.text
                    self.refusals.append(response)
                time.sleep(PACE_S)

    def sample_and_probe(self) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=30) as client:
            while not self.stop.is_set():
                self.depths.append(inspect.depth(self.queue))
                report = {q["queue"]: q for q in client.get("/queues").json()["queues"]}.get(self.queue, {})
                if report.get("admission") == "shedding" and len(self.critical_while_shedding) < 5:
                    response = client.post("/jobs", json=self._body(priority=9))
                    self.critical_while_shedding.append(response.status_code)
                    if response.status_code == 202:
                        self.accepted.append(response.json()["id"])
                time.sleep(0.2)


@pytest.mark.slow
def test_a_flood_is_shed_at_the_door_and_nothing_accepted_is_lost(procs: Processes, make_key: KeyFactory) -> None:
    """Given one worker slot draining about 5 jobs/s and watermarks 50/25,
    When clients submit about 33 jobs/s for 20 s (critical ones among them),
    Then depth never passes 70, every 429 has Retry-After, critical jobs get in while shedding,
    every accepted job succeeds, and admission returns to accepting and stays there."""
    queue = f"flood-{uuid.uuid4().hex[:6]}"
    env = {"MEDIC_QUEUE_WATERMARKS": json.dumps({queue: [HIGH, LOW]})}
    _, url = procs.api("api-flood", **env)
    procs.worker("flood-worker", queues=queue, concurrency=1, **env)
    procs.control_plane(**env)
    _, key = make_key()
    headers = {"Authorization": f"Bearer {key}"}

    flood = Flood(url, headers, queue)
    sampler = threading.Thread(target=flood.sample_and_probe)
    sampler.start()
    senders = [threading.Thread(target=flood.send) for _ in range(THREADS)]
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    accepted, refusals, depths = flood.accepted, flood.refusals, flood.depths

    wait_for(lambda: _all_done(accepted), 180, 0.5, "every accepted job finished")
    flood.stop.set()
    sampler.join()

    assert max(depths) <= BOUND, f"depth peaked at {max(depths)}"
    assert max(depths) >= HIGH - 5, "the flood must actually have filled the queue"
    stats = f"accepted {len(accepted)}, refused {len(refusals)}, peak depth {max(depths)}"
    assert len(refusals) + len(accepted) >= 5 * 5 * FLOOD_S, f"the flood was not 5x the drain rate: {stats}"
    assert len(refusals) > len(accepted) / 2, stats
    assert all(int(r.headers["Retry-After"]) >= 1 for r in refusals)
    assert {r.json()["error"] for r in refusals} == {"queue_full"}
    assert 202 in flood.critical_while_shedding, flood.critical_while_shedding
    assert _states(accepted) == {"succeeded": len(accepted)}

    wait_for(lambda: (t := _admission_transitions(queue)) and t[-1][1] == "accepting", 30, 0.2, "accepting again")
    transitions = _admission_transitions(queue)
    # hysteresis: shedding lasts while 25 jobs drain at ~5/s; a flap would be a near-instant flip back.
    # The flood filled the queue and the gate is accepting again, so at least one shedding spell ended.
    spells = [next_at - at for (at, state), (next_at, _) in itertools.pairwise(transitions) if state == "shedding"]
    assert spells, f"no shedding spell recorded: {transitions}"
    assert all(spell >= 2.0 for spell in spells), transitions
    assert len(transitions) <= 2 * int(FLOOD_S / ((HIGH - LOW) / 5.0) + 1) + 2, transitions


def _states(ids: list[str]) -> dict[str, int]:
    with db.connect() as conn:
        rows = conn.execute(
            sa.select(jobs.c.state, sa.func.count())
            .where(jobs.c.id.in_([uuid.UUID(i) for i in ids]))
            .group_by(jobs.c.state)
        ).all()
    return {state: count for state, count in rows}


def _all_done(ids: list[str]) -> bool:
    return _states(ids).get("succeeded", 0) + _states(ids).get("dead", 0) == len(ids)


def _admission_transitions(queue: str) -> list[tuple[float, str]]:
    with db.connect() as conn:
        rows = conn.execute(
            sa.select(control_decisions.c.at, control_decisions.c.inputs)
            .where(control_decisions.c.queue == queue, control_decisions.c.kind == "admission")
            .order_by(control_decisions.c.id)
        ).all()
    return [(at.timestamp(), inputs["state"]) for at, inputs in rows]
