"""The nemesis suite, short: a seeded schedule of every fault kind (partition, latency, pauses of a
child and of a whole host past the lease, SIGKILL of a host, Redis and PostgreSQL restarts, a
rolling restart) against medic on seven namespace hosts under steady load; then the checker.

One run (module fixture, about two minutes) and one test per property, so a failure names what
broke. The seed is printed; NEMESIS_SEED=<seed> replays a schedule. The run's directory (every
process's log, every host's history, client.jsonl, result.json) is kept under pytest's tmp dir.
See docs/nemesis.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.nemesis.netns import can_make_namespaces, destroy_all
from tests.nemesis.run import Options, run, seed_from_env
from tests.nemesis.schedule import KINDS, WORKERS

pytestmark = [pytest.mark.nemesis, pytest.mark.timeout(480)]

SCHEDULE_S = 70.0  # faults are placed within this; with setup, tail, drain and teardown ~2-2.5 min


@pytest.fixture(scope="module")
def result(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    why = can_make_namespaces()
    if why:
        pytest.skip(f"the nemesis suite needs network namespaces: {why}")
    # run() tears its cluster down in a `finally`; this is the last resort for the namespaces
    request.addfinalizer(destroy_all)
    run_dir = tmp_path_factory.mktemp("nemesis")
    out = run(Options(seed=seed_from_env(), length_s=SCHEDULE_S, drain_s=75.0), run_dir)
    (Path(run_dir) / "result.json").write_text(json.dumps(out, indent=1, default=str))
    print(f"nemesis seed {out['seed']} (replay: {out['replay']}); result in {run_dir}/result.json")
    return out


def _where(result: dict[str, Any]) -> str:
    return f"seed {result['seed']} (replay with {result['replay']}), evidence in {result['run_dir']}"


def test_every_fault_kind_was_injected(result: dict[str, Any]) -> None:
    assert result["fault_errors"] == [], _where(result)
    assert set(result["fault_kinds_run"]) == set(KINDS), _where(result)


def test_no_accepted_job_is_lost(result: dict[str, Any]) -> None:
    jobs = result["jobs"]
    assert jobs["accepted"] > 0
    assert jobs["lost"] == 0, f"{jobs['lost']} accepted jobs not succeeded: {jobs['lost_ids'][:10]}; {_where(result)}"


def test_no_job_finishes_twice_in_the_ledger(result: dict[str, Any]) -> None:
    assert result["duplicate_finishes"] == 0, f"{result['duplicate_finish_ids']}; {_where(result)}"


def test_no_two_executions_of_a_job_are_live_at_once(result: dict[str, Any]) -> None:
    """Live = from an execution's start line to its last line, less the time its pid was paused."""
    assert result["overlaps"] == 0, f"{result['overlap_pairs'][:10]}; {_where(result)}"


def test_the_api_never_answers_500(result: dict[str, Any]) -> None:
    api = result["api"]
    assert api["unexpected"] == 0, f"answers other than 200/202/429/503: {api['unexpected_examples']}; {_where(result)}"


def test_every_worker_consumes_after_the_last_fault(result: dict[str, Any]) -> None:
    idle = [h for h in WORKERS if result["consuming_after_last_fault"][h] == 0]
    assert not idle, (
        f"workers that started no job after the last fault: {idle}; "
        f"exits {result['unexpected_exits']}; {_where(result)}"
    )


def test_no_process_of_the_deployment_dies_by_itself(result: dict[str, Any]) -> None:
    """Processes the nemesis did not end (it restarts those it kills) must still run, or have run
    until the nemesis ended them: a worker that exits on a broker restart needs a supervisor."""
    assert result["unexpected_exits"] == [], f"{result['unexpected_exits']}; {_where(result)}"
