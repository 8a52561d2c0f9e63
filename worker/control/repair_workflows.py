"""repair_workflows: running workflows whose steps' states and releases disagree -> fixed.

A worker's finalize releases (or cancels) a step's dependents in the transaction that ends the
step, so a crash cannot lose a release. A step ended by anything else (recover_stuck or
enforce_timeouts giving up on it, a cancel, a row edited by hand) has no such follow-up: this
loop visits running workflows, least recently touched first (each visit touches the row, a round
robin), and brings each in line with its steps' states (worker/ledger/release.py `repair`):
waiting steps whose predecessors have ended as needed are released, dependents of a failed step
cancelled (fail_fast), and a workflow whose steps are all terminal finished.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging

from worker import logs
from worker.broker.publish import commit_then_publish
from worker.ledger import db, release, workflows
from worker.ledger.states import JobState
from worker.settings import get_settings

log = logging.getLogger(__name__)
ACTOR = "control:repair_workflows"


def repair_workflows(now: dt.datetime, *, limit: int | None = None) -> dict[str, int]:
    """Visit up to `limit` running workflows; count the steps released and cancelled."""
    batch = limit or get_settings().control_batch_size
    with db.connect() as conn:
        ids = workflows.running_oldest_first(conn, batch)
    released = cancelled = 0
    for workflow_id in ids:
        changed = commit_then_publish(functools.partial(release.repair, workflow_id=workflow_id, actor=ACTOR, now=now))
        for job in changed:
            if job is None:
                continue
            what = "released" if job.state in (JobState.QUEUED.value, JobState.HELD.value) else "cancelled"
            released += what == "released"
            cancelled += what == "cancelled"
            log.warning("repair_workflows: step %s of workflow %s %s", job.step, workflow_id, what,
                        extra=logs.job_extra(job, reason=what))  # fmt: skip
    return {"visited": len(ids), "released": released, "cancelled": cancelled}
