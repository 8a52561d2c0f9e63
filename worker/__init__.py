"""medic's platform core, in rooms that import one way (checked by import-linter, `make lint`):

    worker.ops      the `medic` command, `medic up` and its supervisor
    worker.control  the control loops
    worker.accept   accepting jobs: validate, quota, admission, commit, publish (the API's and
                    the library's one way in)
    worker.runtime  @job, the task body, heartbeat, worker signals
    worker.broker   the Celery app, publishing, what the broker holds, Redis keys
    worker.ledger   tables, the state machine, transitions (writes), queries (reads)

`api` imports this package; nothing here imports `api`. The public surface is
`from worker import job, current_job, enqueue, enqueue_many, JobRequest`, and for workflows
`chain, group, chord, sig, si, enqueue_workflow, StepRequest` (docs/workflows.md).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from worker.runtime.current import current_job
from worker.runtime.registry import job

if TYPE_CHECKING:
    from worker.accept import JobRequest, enqueue, enqueue_many
    from worker.accept.canvas import chain, chord, enqueue_workflow, group
    from worker.accept.dag import StepRequest
    from worker.runtime.signature import si, sig

__all__ = [
    "JobRequest",
    "StepRequest",
    "chain",
    "chord",
    "current_job",
    "enqueue",
    "enqueue_many",
    "enqueue_workflow",
    "group",
    "job",
    "si",
    "sig",
]
_LAZY = {
    "JobRequest": "worker.accept",
    "enqueue": "worker.accept",
    "enqueue_many": "worker.accept",
    "chain": "worker.accept.canvas",
    "chord": "worker.accept.canvas",
    "group": "worker.accept.canvas",
    "enqueue_workflow": "worker.accept.canvas",
    "StepRequest": "worker.accept.dag",
    "sig": "worker.runtime.signature",
    "si": "worker.runtime.signature",
}


def __getattr__(name: str) -> Any:
    # Loaded on first use: enqueueing pulls in the broker and the ledger, which a process that
    # only defines jobs (or reads settings) need not import.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
