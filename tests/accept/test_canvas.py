"""The library's canvas builds the DAG a Celery user means: chain, group, chord, nested, with
results passed to mutable signatures whose function declares them, and to a chord's body."""

from __future__ import annotations

import pytest

import worker.examples  # noqa: F401 - registers the example job types
from tests.testjobs import wf_step
from worker import StepRequest, chain, chord, group, si, sig
from worker.accept.dag import check_dag
from worker.errors import InvalidWorkflowError


def _shape(steps: list[StepRequest]) -> dict[str, tuple[tuple[str, ...], bool]]:
    return {s.name: (s.after, s.wants_results) for s in steps}


def w(name: str) -> object:
    """A mutable signature of a job that declares `results`."""
    return wf_step.s(history="-", name=name).set(name=name)  # type: ignore[attr-defined]


def test_a_chain_of_a_group_and_a_chord_builds_the_dag_it_says() -> None:
    canvas = chain(w("a"), group(w("b"), w("c")), chord(group(w("d"), w("e")), w("f")))
    assert _shape(canvas.steps()) == {
        "a": ((), False),  # a root gets no results: it waits for nothing
        "b": (("a",), True),
        "c": (("a",), True),
        "d": (("b", "c"), True),
        "e": (("b", "c"), True),
        "f": (("d", "e"), True),
    }
    check_dag(canvas.steps())


def test_immutable_signatures_and_functions_without_results_get_none_but_a_chords_body_does() -> None:
    echo = sig("examples.echo", message="x")
    shape = _shape(chain(w("a"), echo.set(name="echo"), si(wf_step, history="-", name="b").set(name="b")).steps())
    assert shape["echo"] == (("a",), False), "examples.echo declares no results"
    assert shape["b"] == (("echo",), False), "an immutable signature"
    body = wf_step.si(history="-", name="f").set(name="f")  # type: ignore[attr-defined]
    assert _shape(chord([w("d"), w("e")], body).steps())["f"] == (("d", "e"), True)


def test_steps_without_names_are_named_by_type_and_position() -> None:
    steps = chain(sig("examples.echo", message="1"), sig("examples.echo", message="2")).steps()
    assert [(s.name, s.after) for s in steps] == [("examples.echo#1", ()), ("examples.echo#2", ("examples.echo#1",))]


def test_two_signatures_with_one_name_are_refused_as_the_api_refuses_them() -> None:
    with pytest.raises(InvalidWorkflowError, match="unique"):
        check_dag(group(w("a"), w("a")).steps())


def test_options_set_on_a_signature_reach_its_job_and_unknown_ones_are_refused() -> None:
    [step] = chain(sig("examples.echo", message="x").set(queue="q-x", priority=5, max_attempts=2)).steps()
    assert (step.job.queue, step.job.priority, step.job.max_attempts) == ("q-x", 5, 2)
    with pytest.raises(TypeError, match="unknown signature options"):
        sig("examples.echo").set(countdown=3)
