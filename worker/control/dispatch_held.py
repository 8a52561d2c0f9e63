"""`dispatch_held`: the dispatcher's periodic pass. Most dispatches follow an event (an accept
wrote held jobs, a dispatched job ended); this pass starts what no event will: held jobs whose
`not_before` came (a retry's back-off, a rate's next token), a resumed queue's backlog, keys whose
slots freed while their queue was busy, and anything a crash between a commit and its dispatch
left behind."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

from worker.broker.publish import dispatch_queues
from worker.ledger import db, dispatch
from worker.settings import get_settings


def dispatch_held(now: dt.datetime) -> dict[str, int]:
    """Dispatch every queue with held jobs (with the keys whose heads may start), once."""
    s = get_settings()
    with db.connect() as conn:
        queues = dispatch.queues_with_held(conn)
        keys = dispatch.keys_with_held(conn)
    todo: dict[str, set[str]] = defaultdict(set, {queue: set() for queue in queues})
    for key, queue in keys:
        todo[queue].add(key)
    started = dispatch_queues(dict(todo), budget=s.control_batch_size)
    return {"queues": len(todo), "dispatched": len(started)}
