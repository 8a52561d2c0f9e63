"""The steps of medic and of plain Celery as py-spy stacks show them: one rule per step.

Each profile of the throughput bench is sorted into these labelled steps (the first rule a stack
matches wins, so the order matters). They name medic's own files, so they live apart from the
generic py-spy reading in bench/profiling.py and must follow medic's layout when it moves.
"""

from __future__ import annotations

from bench.medic_run import ROOT
from bench.profiling import MEDIC, Rule, anyof, every, has, leaf_in

PLAIN_TASKS = str(ROOT / "bench" / "plain_celery_app.py")

ENQUEUE_RULES: list[Rule] = [
    (
        "ledger: connection checkout (pool; pre-ping SELECT 1 before the one-statement change)",
        every(
            has(file="sqlalchemy/pool/"),
            anyof(has(func="begin", file=MEDIC + "ledger/db.py"), has(func="write", file=MEDIC + "ledger/db.py")),
        ),
    ),
    ("ledger: COMMIT (WAL flush, synchronous_commit=on)", has(func="do_commit")),
    (
        "ledger: INSERT jobs + job_events (one CTE statement on PostgreSQL since the change; two before)",
        has(func="create_jobs", file=MEDIC),
    ),
    ("celery: task-sent event (task_send_sent_event=True), a 2nd Redis publish per job", has(file="celery/events/")),
    (
        "broker: build the task message and LPUSH it (broker/messages.py, broker/publish.py)",
        anyof(has(file=MEDIC + "broker/publish.py"), has(file=MEDIC + "broker/messages.py")),
    ),
    ("redis: queue arrival counters (broker.counters, sent with the messages)", has(file=MEDIC + "broker/counters.py")),
    ("validation + row build (pydantic, uuid4, json size check)", has(func="build_row", file=MEDIC)),
    (
        "ledger: transaction begin/end, connection return (rollback-reset)",
        has(func="begin", file=MEDIC + "ledger/db.py"),
    ),
]

API_RULES: list[Rule] = [
    (
        "tenant quota: COUNT of the tenant's queued jobs on every request (admission.check_tenant_quota)",
        has(func="check_tenant_quota", file=MEDIC),
    ),
    (
        "admission: Redis EVAL (queue depth + pending) and DECRBY release (control/admission.py)",
        has(file=MEDIC + "control/admission.py"),
    ),
    *ENQUEUE_RULES,
    ("response: JobPublic.of (api/schemas.py)", has(file=str(ROOT / "api" / "schemas.py"))),
    (
        "other medic code in the route (api/routes/jobs.py, worker/)",
        anyof(has(file=str(ROOT / "api")), has(file=MEDIC)),
    ),
    ("API key dependency (api/deps.py, cached)", has(file=str(ROOT / "api" / "deps.py"))),
    ("metrics (prometheus_client)", has(file="prometheus_client")),
    (
        "threadpool hand-offs: the sync route and each sync dependency run in an anyio worker thread",
        anyof(has(func="run_sync_in_worker_thread"), leaf_in("/queue.py", "/threading.py")),
    ),
    ("FastAPI: request parsing/validation, dependency solving, response serialization", has(file="/fastapi/")),
    ("uvicorn / starlette: HTTP parsing, middleware", anyof(has(file="/uvicorn/"), has(file="/starlette/"))),
]

CHILD_RULES: list[Rule] = [
    ("ledger claim: UPDATE queued->running RETURNING + event row + COMMIT", has(func="do_claim", file=MEDIC)),
    ("ledger finalize: UPDATE running->succeeded RETURNING + event row + COMMIT", has(func="_finalize", file=MEDIC)),
    (
        "presence SET in Redis at every job start (Heartbeat.track -> announce)",
        has(func="track", file=MEDIC + "runtime/heartbeat.py"),
    ),
    ("redis: drain counter INCR per job (broker.counters.record_drained)", has(file=MEDIC + "broker/counters.py")),
    ("job function + loading its args (pydantic)", has(func="_run", file=MEDIC + "runtime/task.py")),
    ("plain task body: INCR + RPUSH completion record (1 Redis round trip)", has(file=PLAIN_TASKS)),
    ("other medic code in the task (uuid parsing, get_heartbeat, logging)", has(file=MEDIC)),
    ("celery tracer in the child (task state, signals, logging)", has(file="celery/app/trace.py")),
    ("sending the result to the main process (billiard pipe)", has(func="put", file="billiard/queues.py")),
]
CHILD_REST = "idle: waiting for the next task from the main process (billiard pipe)"

PARENT_RULES: list[Rule] = [
    ("task events (-E: task-received/started/succeeded) published to Redis", has(file="celery/events/")),
    ("ack after the task (acks_late: unacked hash/zset cleanup)", has(func="ack")),
    ("medic request hooks (worker.runtime.signals)", has(file=MEDIC + "runtime/signals.py")),
    ("receiving from Redis (BRPOP, unacked bookkeeping, message decode)", has(file="kombu/transport/")),
    ("handing tasks to the pool / reading results (asynpool, billiard)", has(file="celery/concurrency/")),
    ("celery consumer: strategy, Request objects, logging", has(file="celery/worker/")),
]
PARENT_REST = "other (event loop bookkeeping)"
