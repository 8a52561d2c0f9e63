"""The nemesis checker on hand-made histories: each check must fail on the history it guards
against (and pass on its harmless twin), or the nemesis suite could pass with anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.nemesis import checker
from tests.nemesis.checker import LedgerEvent


def lines(
    job: str, delivery: str, host: str, pid: int, start: float, last: float, end: bool = True
) -> list[dict[str, Any]]:
    """An execution's lines: start, a tick every 0.5 s up to `last`, and an end line if `end`."""
    base = {"job": job, "delivery": delivery, "host": host, "pid": pid, "attempt": None}
    out = [{**base, "event": "start", "t": start}]
    t = start + 0.5
    while t < last:
        out.append({**base, "event": "tick", "t": t})
        t += 0.5
    out.append({**base, "event": "end" if end else "tick", "t": last})
    return out


def test_two_live_executions_of_one_job_are_an_overlap() -> None:
    history = lines("J", "d1", "w1", 100, 0.0, 5.0) + lines("J", "d2", "w2", 200, 4.0, 8.0)
    found = checker.overlaps(checker.executions(history), {})
    assert len(found) == 1
    assert found[0].job == "J" and found[0].seconds == 1.0


def test_executions_one_after_the_other_do_not_overlap() -> None:
    history = lines("J", "d1", "w1", 100, 0.0, 5.0) + lines("J", "d2", "w2", 200, 5.5, 8.0)
    history += lines("K", "d3", "w1", 100, 4.0, 6.0)  # another job at the same time is no overlap
    assert checker.overlaps(checker.executions(history), {}) == []


def test_paused_time_is_not_live() -> None:
    """A paused execution's stopped window is subtracted: the rerun inside it is no overlap; the
    same history without the pause window is one."""
    history = lines("J", "d1", "w1", 100, 0.0, 20.0) + lines("J", "d2", "w2", 200, 12.0, 15.0)
    faults = [{"kind": "pause_child", "host": "w1", "pids": [100], "pauses": [{"pid": 100, "stop": 2.0, "cont": 16.0}]}]
    runs = checker.executions(history)
    assert checker.overlaps(runs, checker.pause_windows(faults)) == []
    assert len(checker.overlaps(runs, {})) == 1


def test_a_resumed_execution_that_runs_on_past_its_rerun_start_overlaps() -> None:
    """Paused, then resumed while its rerun runs: live again after SIGCONT, so an overlap."""
    history = lines("J", "d1", "w1", 100, 0.0, 17.0) + lines("J", "d2", "w2", 200, 12.0, 15.0)
    faults = [{"kind": "pause_host", "host": "w1", "pids": [100], "pauses": [{"pid": 100, "stop": 2.0, "cont": 13.0}]}]
    found = checker.overlaps(checker.executions(history), checker.pause_windows(faults))
    assert [(o.job, o.seconds) for o in found] == [("J", 2.0)]


def test_a_fenced_note_after_resume_is_no_overlap_but_a_tick_is() -> None:
    """A resumed execution that only writes its `fenced` note (still_owner() said no) did nothing
    of the job: no overlap. The same line as a `tick` is a step run after resume: an overlap."""
    history = lines("J", "d1", "w1", 100, 0.0, 2.0, end=False) + lines("J", "d2", "w2", 200, 12.0, 15.0)
    pauses = checker.pause_windows([{"pauses": [{"pid": 100, "stop": 2.0, "cont": 13.0}]}])
    note = {"job": "J", "delivery": "d1", "host": "w1", "pid": 100, "attempt": None, "t": 13.01}
    fenced = checker.executions([*history, {**note, "event": "fenced"}])
    assert checker.overlaps(fenced, pauses) == []
    assert next(e for e in fenced if e.delivery == "d1").fenced
    assert len(checker.overlaps(checker.executions([*history, {**note, "event": "tick"}]), pauses)) == 1


def test_subtract_leaves_the_pieces_outside_the_holes() -> None:
    assert checker.subtract((0, 10), [(2, 3), (5, 7)]) == [(0, 2), (3, 5), (7, 10)]
    assert checker.subtract((0, 10), [(-5, 15)]) == []
    assert checker.subtract((0, 10), [(10, 12)]) == [(0, 10)]


def test_a_second_start_in_one_process_is_a_second_execution() -> None:
    history = lines("J", "d1", "w1", 100, 0.0, 1.0) + lines("J", "d1", "w1", 100, 2.0, 3.0)
    runs = checker.executions(history)
    assert [(r.start, r.last, r.ended) for r in runs] == [(0.0, 1.0, True), (2.0, 3.0, True)]


def _answer(key: str, status: int | None, job: str | None = None, t: float = 1.0) -> dict[str, Any]:
    return {"key": key, "try": 1, "sent": t, "answered": t, "status": status, "job": job}


def test_accepted_jobs_not_succeeded_are_lost() -> None:
    said = checker.answers([_answer("a", 202, "J1"), _answer("b", 200, "J2"), _answer("c", 202, "J3"),
                            _answer("d", 503), _answer("e", 429)])  # fmt: skip
    states = {"J1": "succeeded", "J2": "dead"}  # J3 has no row at all
    assert checker.lost(said.accepted, states) == ["J2", "J3"]
    assert checker.lost(said.accepted, dict.fromkeys(["J1", "J2", "J3"], "succeeded")) == []


def test_a_job_finished_twice_in_the_ledger_is_a_duplicate() -> None:
    ev = [
        LedgerEvent("J", "running", "claimed", "d1", 1, 1.0),
        LedgerEvent("J", "succeeded", "succeeded", "d1", 1, 2.0),
        LedgerEvent("K", "succeeded", "succeeded", "d2", 1, 2.0),
        LedgerEvent("J", "succeeded", "succeeded", "d2", 2, 3.0),
    ]
    assert checker.duplicate_finishes(ev) == {"J": 2}
    assert checker.duplicate_finishes(ev[:3]) == {}


def test_answers_count_500s_and_connection_errors_apart_from_503_and_429() -> None:
    said = checker.answers([_answer("a", 202, "J"), _answer("b", 503), _answer("b", 429), _answer("c", 500),
                            _answer("d", None), _answer("e", 404)])  # fmt: skip
    assert said.connection_errors == 1
    assert sorted(u["status"] for u in said.unexpected) == [404, 500]
    assert said.submits == 5 and list(said.accepted) == ["J"]


def test_kill_to_rerun_is_from_the_fault_to_the_next_start_of_a_cut_job() -> None:
    history = lines("J", "d1", "w1", 100, 0.0, 4.9, end=False) + lines("J", "d2", "w2", 200, 17.0, 18.0)
    history += lines("K", "d3", "w1", 101, 0.0, 3.0)  # ended before the kill: not cut
    history += lines("L", "d4", "w2", 201, 0.0, 9.0)  # another host: not cut
    faults = [{"kind": "kill_host", "host": "w1", "start": 5.0, "pids": [100, 101]}]
    found, in_place = checker.recoveries(checker.executions(history), faults)
    assert [(r.job, r.seconds) for r in found] == [("J", 12.0)]
    assert in_place == 0


def test_a_paused_child_cuts_only_its_own_job() -> None:
    history = lines("J", "d1", "w1", 100, 0.0, 20.0) + lines("J", "d2", "w2", 200, 13.0, 14.0)
    history += lines("K", "d3", "w1", 101, 0.0, 20.0)  # same host, other child: not paused, not cut
    faults = [{"kind": "pause_child", "host": "w1", "start": 2.0, "pids": [100], "pauses": []}]
    found, in_place = checker.recoveries(checker.executions(history), faults)
    assert [(r.job, r.seconds) for r in found] == [("J", 11.0)]
    assert in_place == 0


def test_the_verdict_counts_what_it_found() -> None:
    history = lines("J", "d1", "w1", 100, 0.0, 5.0) + lines("J", "d2", "w2", 200, 4.0, 8.0)
    client = [_answer("a", 202, "J"), _answer("b", 202, "K"), _answer("c", 500)]
    events = [
        LedgerEvent("J", "running", "claimed", "d1", 1, 0.0),
        LedgerEvent("J", "succeeded", "succeeded", "d1", 1, 5.0),
        LedgerEvent("J", "running", "claimed", "d2", 2, 4.0),
        LedgerEvent("J", "succeeded", "succeeded", "d2", 2, 8.0),
    ]
    v = checker.check(history, client, [], {"J": "succeeded", "K": "queued"}, events)
    assert v["overlap_pairs"][0]["attempts"] == [1, 2]  # from the ledger's claims of the two deliveries
    assert (v["jobs"]["accepted"], v["jobs"]["succeeded"], v["jobs"]["lost"]) == (2, 1, 1)
    assert (v["duplicate_finishes"], v["overlaps"], v["history_finished_twice"]) == (1, 1, 1)
    assert v["api"]["server_errors_500"] == 1


def test_a_line_cut_short_by_a_kill_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    path.write_text('{"event":"start","t":1}\n{"event":"tick","t":1.05}\n{"event":"ti')
    assert [e["event"] for e in checker.read_jsonl(path)] == ["start", "tick"]
