"""Accepting jobs, for the API and the library alike: `accept()` in worker/accept/flow.py is
the one function both call. Its steps, each in a module of its own:

    validate.py      JobRequest -> NewJob: type, args, size, queue, the caller's queues
    quota.py         the tenant's queued-job quota
    admission.py     room in each queue below its watermark (reservations), the hysteresis rule
    commit.py        one transaction for the jobs (idempotency keys settled there), then publish
    group_commit.py  single jobs of concurrent callers of one process in one transaction
    dag.py           a workflow's shape: names, `after`, no cycle, its size
    workflow.py      a workflow: every step validated, one transaction, the roots published
    canvas.py        chain, group, chord: the library's form of a workflow
"""

from __future__ import annotations

from worker.accept.commit import Accepted
from worker.accept.flow import DEFAULT_TENANT, Caller, accept, enqueue, enqueue_many
from worker.accept.validate import JobRequest

__all__ = ["DEFAULT_TENANT", "Accepted", "Caller", "JobRequest", "accept", "enqueue", "enqueue_many"]
# The workflow modules (dag, workflow, canvas) are imported by name: `from worker import chain`
# loads them on first use.
