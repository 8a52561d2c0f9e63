"""The library's form of a workflow, as a Celery user writes one: `chain(a, b)`, `group(b, c)`,
`chord(group(...), d)` of signatures (`my_job.s(**args)`, `sig("type", **args)`), built into
the same DAG of steps `POST /workflows` takes and submitted through the same accept path.

- chain(a, b, c): b waits for a, c for b.
- group(a, b): a and b wait for the same steps (what comes before the group), in parallel; what
  comes after the group waits for all of them.
- chord(group(a, b), d): d waits for a and b, and is given their results (a chord's body asks
  for them even as `.si`: Celery hands a chord's body the header's results likewise).

A mutable signature (`.s`, `sig`) is given the results of the steps it waits for when its
function declares a `results` parameter; an immutable one (`.si`, `si`) never, outside a chord.
Step names are the signature's (`.set(name=...)`) or made from the type: `<type>#<n>`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from worker.accept.dag import StepRequest
from worker.accept.flow import DEFAULT_TENANT, Caller
from worker.accept.validate import JobRequest
from worker.accept.workflow import RESULTS_ARG, AcceptedWorkflow, WorkflowRequest, accept_workflow
from worker.ledger.workflows import FailurePolicy
from worker.runtime.registry import get_spec
from worker.runtime.signature import Signature


class Canvas:
    """A chain, a group or a chord: something that builds into steps and can be submitted."""

    def build(self, after: tuple[str, ...], names: _Names) -> tuple[list[StepRequest], tuple[str, ...]]:
        """Its steps, each first one waiting for `after`; and its tails (what follows waits for)."""
        raise NotImplementedError

    def steps(self) -> list[StepRequest]:
        """The whole DAG, as `POST /workflows` takes it."""
        return self.build((), _Names())[0]

    def submit(
        self,
        *,
        name: str | None = None,
        failure_policy: str = FailurePolicy.FAIL_FAST.value,
        tenant: str = DEFAULT_TENANT,
        actor: str = "library",
        admission: bool = True,
    ) -> AcceptedWorkflow:
        """Accept this workflow (worker/accept/workflow.py): all of it, or nothing."""
        return enqueue_workflow(
            self.steps(), name=name, failure_policy=failure_policy, tenant=tenant, actor=actor, admission=admission
        )


Node = Signature | Canvas


class _Names:
    """Unique step names for signatures that have none."""

    def __init__(self) -> None:
        self.n = 0

    def of(self, sig: Signature) -> str:
        self.n += 1
        return sig.name or f"{sig.type}#{self.n}"


def _build(
    node: Node, after: tuple[str, ...], names: _Names, *, chord_body: bool = False
) -> tuple[list[StepRequest], tuple[str, ...]]:
    if isinstance(node, Canvas):
        return node.build(after, names)
    name = names.of(node)
    wants = bool(after) and (chord_body or (not node.immutable and _declares_results(node.type)))
    options: dict[str, Any] = dict(node.options)
    job = JobRequest(node.type, dict(node.args), **options)
    return [StepRequest(name, job, after, wants)], (name,)


def _declares_results(type_: str) -> bool:
    return RESULTS_ARG in get_spec(type_).args_model.model_fields


@dataclass(frozen=True, init=False)
class chain(Canvas):  # noqa: N801 - named as Celery's
    """Each item waits for the one before it."""

    items: tuple[Node, ...]

    def __init__(self, *items: Node) -> None:
        object.__setattr__(self, "items", items)

    def build(self, after: tuple[str, ...], names: _Names) -> tuple[list[StepRequest], tuple[str, ...]]:
        steps: list[StepRequest] = []
        tails = after
        for item in self.items:
            more, tails = _build(item, tails, names)
            steps += more
        return steps, tails


@dataclass(frozen=True, init=False)
class group(Canvas):  # noqa: N801 - named as Celery's
    """Every item waits for what comes before the group; what follows waits for all of them."""

    items: tuple[Node, ...]

    def __init__(self, *items: Node) -> None:
        object.__setattr__(self, "items", items)

    def build(self, after: tuple[str, ...], names: _Names) -> tuple[list[StepRequest], tuple[str, ...]]:
        steps: list[StepRequest] = []
        tails: tuple[str, ...] = ()
        for item in self.items:
            more, ends = _build(item, after, names)
            steps += more
            tails += ends
        return steps, tails


@dataclass(frozen=True)
class chord(Canvas):  # noqa: N801 - named as Celery's
    """`body` waits for every item of `header` and is given their results."""

    header: group | Sequence[Node]
    body: Signature

    def build(self, after: tuple[str, ...], names: _Names) -> tuple[list[StepRequest], tuple[str, ...]]:
        header = self.header if isinstance(self.header, group) else group(*self.header)
        steps, tails = header.build(after, names)
        more, ends = _build(self.body, tails, names, chord_body=True)
        return steps + more, ends


def enqueue_workflow(
    steps: Sequence[StepRequest] | Canvas,
    *,
    name: str | None = None,
    failure_policy: str = FailurePolicy.FAIL_FAST.value,
    tenant: str = DEFAULT_TENANT,
    actor: str = "library",
    admission: bool = True,
) -> AcceptedWorkflow:
    """Accept a workflow given as steps or as a canvas: the same checks as `POST /workflows`,
    the caller's queues aside (the library may use every declared queue)."""
    requests = steps.steps() if isinstance(steps, Canvas) else list(steps)
    return accept_workflow(WorkflowRequest(requests, name, failure_policy), Caller(tenant, actor, admission=admission))
