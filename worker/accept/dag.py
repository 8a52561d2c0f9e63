"""A workflow's shape, checked before anything else (no I/O): at least one and at most
MAX_STEPS steps, unique names, every `after` name known, no cycle (a topological sort).

Each raises InvalidWorkflowError (a 422) naming what is wrong; the order it returns is the one the
steps are written in, so every step comes after all the steps it waits for.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from worker.accept.validate import JobRequest
from worker.errors import InvalidWorkflowError

MAX_STEPS = 1000
"""The most steps one workflow may have: each step's end reads its workflow's steps (O(steps))."""


@dataclass(frozen=True)
class StepRequest:
    """One step as a caller asks for it: a job, its name, the names of the steps it waits for,
    and whether it is given their results (an argument `results: {step name: result}`)."""

    name: str
    job: JobRequest
    after: tuple[str, ...] = field(default_factory=tuple)
    wants_results: bool = False


def check_dag(steps: Sequence[StepRequest], max_steps: int = MAX_STEPS) -> list[int]:
    """The indexes of `steps` in a topological order (roots first, ties in the caller's order).

    Raises:
        InvalidWorkflowError: no steps, too many, a name twice, an unknown or repeated `after`
            name, or a cycle (its steps named).
    """
    if not steps:
        raise InvalidWorkflowError("a workflow needs at least one step")
    if len(steps) > max_steps:
        raise InvalidWorkflowError(f"a workflow holds at most {max_steps} steps, not {len(steps)}", limit=max_steps)
    twice = sorted(name for name, n in Counter(s.name for s in steps).items() if n > 1)
    if twice:
        raise InvalidWorkflowError(f"step names must be unique: {', '.join(map(repr, twice))}", names=twice)
    index = {s.name: i for i, s in enumerate(steps)}
    for step in steps:
        unknown = sorted(set(step.after) - set(index))
        if unknown:
            raise InvalidWorkflowError(
                f"step {step.name!r} waits for unknown steps {', '.join(map(repr, unknown))}",
                step=step.name,
                unknown=unknown,
            )
        if len(set(step.after)) != len(step.after):
            raise InvalidWorkflowError(f"step {step.name!r} names a step twice in `after`", step=step.name)
    return _topological(steps, index)


def _topological(steps: Sequence[StepRequest], index: dict[str, int]) -> list[int]:
    """Kahn's algorithm; what is left over lies on (or after) a cycle."""
    pending = [len(s.after) for s in steps]
    dependents: list[list[int]] = [[] for _ in steps]
    for i, step in enumerate(steps):
        for name in step.after:
            dependents[index[name]].append(i)
    ready = [i for i, n in enumerate(pending) if n == 0]
    order: list[int] = []
    while ready:
        i = ready.pop(0)
        order.append(i)
        for d in dependents[i]:
            pending[d] -= 1
            if pending[d] == 0:
                ready.append(d)
    if len(order) < len(steps):
        stuck = [steps[i].name for i in range(len(steps)) if pending[i] > 0]
        raise InvalidWorkflowError(
            f"the steps' `after` make a cycle (through {', '.join(map(repr, stuck[:10]))})", cycle=stuck[:50]
        )
    return order
