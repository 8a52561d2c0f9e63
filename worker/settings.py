"""One settings object for every process; environment variables prefixed ``MEDIC_``.

Settings are read when first asked for (``get_settings()``), never at import time, so tests and
the CLI can set the environment first.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DATABASE_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/medic"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
SENTINEL_SCHEME = "sentinel://"
DEFAULT_SENTINEL_PORT = 26379
PLACEHOLDER_SECRETS = {"changeme", "change-me", "password", "secret", "medic-dev", "medic"}
PLACEHOLDER_PREFIXES = ("change-me", "changeme", "change_me")
MIN_SECRET_LENGTH = 16
EXAMPLE_JOBS = "worker.examples"


class TenantLimits(BaseModel):
    """One tenant's own caps (MEDIC_TENANT_LIMITS); a cap left out is the global one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    queued: int | None = Field(None, gt=0)
    max_timeout_seconds: float | None = Field(None, gt=0)
    max_attempts: int | None = Field(None, ge=1)


# `MEDIC_PROFILE=fast`: short leases and periods so tests and demos see recovery in seconds.
# Only defaults change; a variable set explicitly always wins.
FAST_PROFILE: dict[str, Any] = {
    "lease_seconds": 3.0,
    "heartbeat_seconds": 0.5,
    "presence_ttl_seconds": 1.5,
    "timeout_grace_seconds": 1.0,
    "shutdown_grace_seconds": 3.0,
    "cancel_grace_seconds": 2.0,
    "default_backoff_seconds": 0.2,
    "finalize_retry_seconds": 20.0,
    "api_key_cache_seconds": 1.0,
    "beat_alive_seconds": 1.0,
    "recover_period_seconds": 1.0,
    "timeout_period_seconds": 1.0,
    "reconcile_period_seconds": 1.0,
    "workflow_repair_period_seconds": 1.0,
    "lost_after_seconds": 5.0,
    "backpressure_period_seconds": 0.5,
    "autoscale_period_seconds": 2.0,
    "scale_down_cooldown_seconds": 5.0,
    "health_period_seconds": 1.0,
    "schedule_period_seconds": 0.5,
    "dispatch_period_seconds": 0.5,
    "schedule_missed_slack_seconds": 3.0,
    "alert_for_seconds": 3.0,
    "alert_repeat_seconds": 60.0,
    "consumer_stall_seconds": 3.0,
}


class Settings(BaseSettings):
    """Every threshold of the platform, with a production default."""

    model_config = SettingsConfigDict(env_prefix="MEDIC_", extra="ignore")

    profile: Literal["production", "fast"] = Field(
        "production", description="`fast` shortens leases and loop periods (tests, demos)."
    )

    # where things live
    database_url: str = Field(DEFAULT_DATABASE_URL, description="SQLAlchemy URL of the job ledger.")
    redis_url: str = Field(
        DEFAULT_REDIS_URL,
        description="Redis: broker and medic's own keys; `sentinel://host:port;sentinel://host2:port` "
        "(a password for the master in the first: `sentinel://:pw@host:port/0`) follows a Sentinel-managed master.",
    )
    broker_url: str = Field(
        "",
        description="The broker that carries the task messages: empty (MEDIC_REDIS_URL's Redis) or "
        "`amqp://user:password@host:5672/vhost` (RabbitMQ; Redis stays the store of counters, presence and admission).",
    )
    rabbitmq_queue_type: Literal["quorum", "classic"] = Field(
        "quorum",
        description="RabbitMQ queue type medic and its workers declare: `quorum` (replicated; no priorities before "
        "RabbitMQ 4) or `classic` (with x-max-priority 9, so job priorities apply).",
    )
    broker_confirm_timeout_seconds: float = Field(
        5.0, gt=0, description="RabbitMQ: longest wait for the publisher confirms of one publish; past it, refused."
    )
    redis_sentinel_master: str = Field(
        "", description="Name of the master the Sentinels watch (required with a sentinel:// MEDIC_REDIS_URL)."
    )
    redis_sentinel_password: str = Field(
        "", description="Password of the Sentinels themselves (requirepass of sentinel.conf); empty: none."
    )
    key_prefix: str = Field("medic:", description="Prefix of every key medic writes in Redis.")
    broker_key_prefix: str = Field(
        "", description="kombu global_keyprefix in front of every broker key (queues, unacked)."
    )
    job_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated modules imported at start so their @job functions register "
        "(`medic up` and the tests load `worker.examples`, the demo jobs).",
    )
    allow_example_jobs: bool = Field(
        False,
        description="Let `MEDIC_PROFILE=production` load `worker.examples` (for a demo only: any tenant "
        "with a submit key could run `examples.crash`, which kills a worker child).",
    )

    # liveness
    lease_seconds: float = Field(
        4.0,
        gt=0,
        description="How long a claim or a heartbeat keeps a job's lease. A worker that cannot renew it "
        "within this stops the job (self-fencing); a crashed worker's jobs run again after about this "
        "plus the margin. Longer: fewer jobs killed by a slow ledger; shorter: faster recovery.",
    )
    heartbeat_seconds: float = Field(
        1.0, gt=0, description="How often a worker extends its leases (shorter than the presence TTL)."
    )
    presence_ttl_seconds: float = Field(
        2.5, gt=0, description="TTL of a worker process's presence key in Redis (shorter than the lease)."
    )
    lease_margin_seconds: float = Field(
        0.5,
        ge=0.1,
        description="recover_stuck takes a job only this long after its lease expired: it covers the "
        "clock skew between worker and control hosts and the fence's reaction time (50 ms).",
    )
    timeout_grace_seconds: float = Field(5.0, ge=0, description="Added to a job's timeout for the hard time limit.")
    shutdown_grace_seconds: float = Field(
        25.0,
        ge=0,
        description="How long a worker's warm shutdown (SIGTERM) lets running jobs finish; those still running "
        "then are killed and handed back at once, at no cost in attempts (the pod's termination grace must be "
        "at least this + 5 s).",
    )
    cancel_grace_seconds: float = Field(
        10.0,
        ge=0,
        description="How long a running job whose cancel was requested may go on once its worker learned of it "
        "(at its next heartbeat, or at once from the broadcast): `current_job().cancelled()` is True meanwhile; "
        "then a prefork worker kills it and it ends `cancelled` (stopped).",
    )
    cancel_broadcast: bool = Field(
        True,
        description="Also broadcast each cancel request to the workers, so it is learned at once rather than at "
        "the next heartbeat (off: the heartbeat alone, as when the broadcast is lost).",
    )
    max_bulk_cancel: int = Field(1000, gt=0, description="Most jobs one POST /jobs/cancel acts on.")
    consumer_stall_seconds: float = Field(
        30.0,
        gt=0,
        description="A worker whose queue holds ready jobs and which has free slots but received nothing for this "
        "long has its consumer restarted (MedicConsumerStalled); still so as long again: a warm shutdown.",
    )

    # control loops
    beat_alive_seconds: float = Field(5.0, gt=0, description="Period of the beat/control liveness tick.")
    recover_period_seconds: float = Field(1.0, gt=0, description="Period of recover_stuck.")
    timeout_period_seconds: float = Field(5.0, gt=0, description="Period of enforce_timeouts.")
    reconcile_period_seconds: float = Field(15.0, gt=0, description="Period of reconcile_broker.")
    prune_period_seconds: float = Field(3600.0, gt=0, description="Period of prune.")
    workflow_repair_period_seconds: float = Field(
        30.0, gt=0, description="Period of repair_workflows (a step ended without its dependents released)."
    )
    lost_after_seconds: float = Field(
        300.0, gt=0, description="A queued job older than this whose message is not in the broker is re-sent."
    )
    max_redeliveries: int = Field(
        5, ge=1, description="A job re-sent this often as lost is dead (undeliverable: no worker knows it?)."
    )
    retention_days: float = Field(30.0, gt=0, description="Finished jobs and their events are kept this long.")
    prune_budget_seconds: float = Field(
        1200.0, ge=0, description="Longest prune run (capped at the prune period); the rest waits for the next run."
    )
    control_batch_size: int = Field(500, gt=0, description="Most jobs one control-loop run acts on.")
    queue_forget_seconds: float = Field(
        86400.0,
        gt=0,
        description="A known queue with no new job for this long and nothing in its lists is forgotten by "
        "prune (the loops, GET /queues and health stop walking it) until its next job.",
    )
    reconcile_scan_limit: int = Field(
        100_000, gt=0, description="Most messages reconcile reads per run looking for lost ones; past it it skips."
    )

    # admission control (backpressure)
    backpressure_period_seconds: float = Field(2.0, gt=0, description="Period of apply_backpressure.")
    high_watermark: int = Field(10_000, gt=0, description="Queue depth at which a queue starts shedding (429).")
    low_watermark: int = Field(5_000, ge=0, description="Queue depth at which a shedding queue accepts again.")
    queue_watermarks: dict[str, tuple[int, int]] = Field(
        default_factory=dict, description='Per-queue overrides, JSON: {"queue": [high, low]}.'
    )
    critical_priority: int = Field(8, ge=0, le=9, description="Jobs at or above it are admitted while shedding.")
    tenant_queued_quota: int = Field(100_000, gt=0, description="Most queued jobs one tenant may have.")
    tenant_limits: dict[str, TenantLimits] = Field(
        default_factory=dict,
        description='Per-tenant caps, JSON: {"tenant": {"queued": 500, "max_timeout_seconds": 60, '
        '"max_attempts": 3}}; each key optional, falling back to MEDIC_TENANT_QUEUED_QUOTA, '
        "MEDIC_MAX_JOB_TIMEOUT_SECONDS, MEDIC_MAX_JOB_ATTEMPTS.",
    )
    tenant_queue_share: float = Field(
        0.2,
        gt=0,
        le=1,
        description="Most of a queue's high watermark one tenant's queued jobs may take (429 tenant_quota "
        "past it, while other tenants are still accepted); 1: no cap but the watermark.",
    )
    # flow control: the dispatcher (worker/ledger/dispatch.py, docs/flow.md)
    dispatch_queues: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated queues whose jobs the dispatcher starts (fair share between tenants, "
        "priorities that age); `*`: every queue. Job types with a concurrency key or a rate limit are "
        "dispatched on any queue.",
    )
    dispatch_window: int = Field(
        16,
        gt=0,
        description="Most jobs of a dispatched queue published and not finished at once: about its worker "
        "slots plus a few (a smaller window is fairer, a larger one keeps more slots busy).",
    )
    dispatch_period_seconds: float = Field(
        1.0, gt=0, description="Period of dispatch_held (held jobs whose not_before came, resumed queues)."
    )
    dispatch_scan: int = Field(
        200, gt=0, description="Most held jobs one dispatch reads per tenant or per key when it picks."
    )
    priority_aging_seconds: float = Field(
        60.0,
        gt=0,
        description="On a dispatched queue, one step of priority is worth this much waiting: a job of "
        "priority p goes before jobs up to p x this older, and no job waits behind ever newer ones.",
    )
    tenant_weights: dict[str, float] = Field(
        default_factory=dict,
        description='Fair-share weights per tenant on dispatched queues, JSON: {"tenant": 2.0}; others 1.',
    )
    retry_after_min_seconds: int = Field(1, ge=1, description="Smallest Retry-After of a 429.")
    retry_after_max_seconds: int = Field(300, ge=1, description="Largest Retry-After of a 429.")
    api_max_inflight: int = Field(64, gt=0, description="Requests one API process serves at once; more get 503.")
    db_pool_size: int = Field(10, gt=0, description="Ledger connections per process (as many again on overflow).")
    worker_db_pool_size: int = Field(
        2, gt=0, description="MEDIC_DB_POOL_SIZE of worker processes started by medic worker/control/up, unless set."
    )
    db_pool_timeout_seconds: float = Field(2.0, gt=0, description="Longest wait for a ledger connection (then 503).")
    db_prepared_statements: bool = Field(
        True,
        description="Prepare the hot writes (enqueue, claim, finalize) once per connection (PREPARE/EXECUTE). "
        "Turn off behind a connection pooler in transaction mode (PgBouncer), which cannot keep them.",
    )
    db_statement_timeout_ms: int = Field(
        30_000, ge=0, description="statement_timeout of every ledger transaction (SET LOCAL, PgBouncer-safe); 0: off."
    )
    db_lock_timeout_ms: int = Field(
        5_000, ge=0, description="lock_timeout of every ledger transaction: longest wait for a row lock; 0: off."
    )
    db_idle_in_transaction_timeout_ms: int = Field(
        60_000, ge=0, description="idle_in_transaction_session_timeout of every ledger transaction; 0: off."
    )
    db_tcp_keepalive_seconds: int = Field(
        10,
        ge=0,
        description="Ledger TCP keepalive idle and interval; a peer silent 4x this long is dropped; 0: off.",
    )

    # autoscaling
    autoscale_period_seconds: float = Field(15.0, gt=0, description="Period of autoscale.")
    scaler: Literal["celery", "process", "none"] = Field("none", description="Who applies scaling decisions.")
    min_concurrency: int = Field(1, ge=0, description="Fewest worker slots per queue.")
    max_concurrency: int = Field(8, ge=1, description="Most worker slots per queue.")
    scale_down_cooldown_seconds: float = Field(120.0, ge=0, description="Quiet time before scaling down.")
    target_drain_seconds: float = Field(30.0, gt=0, description="Backlog the autoscaler aims to clear within this.")

    # job defaults
    default_queue: str = Field("default", description="Queue of a job that names none.")
    queues: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated queues jobs may use besides the job types' own and the default; "
        "`name-*` declares a prefix.",
    )
    default_timeout_seconds: float = Field(300.0, gt=0, description="Timeout of a job that sets none.")
    default_max_attempts: int = Field(3, ge=1, description="Attempts of a job that sets none.")
    max_job_timeout_seconds: float = Field(
        3600.0,
        gt=0,
        description="Longest timeout a submission may ask for (422 past it; a job type's own may be longer).",
    )
    max_job_attempts: int = Field(
        10, ge=1, description="Most attempts a submission may ask for (422 past it; a job type's own may be more)."
    )
    default_backoff_seconds: float = Field(2.0, ge=0, description="First retry delay; doubles.")
    max_backoff_seconds: float = Field(300.0, ge=0, description="Cap of the retry delay.")
    finalize_retry_seconds: float = Field(
        60.0, ge=0, description="How long a worker retries recording a result while the ledger is down."
    )

    # API
    max_payload_bytes: int = Field(65536, gt=0, description="Largest JSON args of one job.")
    max_result_bytes: int = Field(
        65536, gt=0, description="Largest JSON result of one job; a larger one fails the job (result_too_large)."
    )
    max_request_bytes: int = Field(4 * 1024 * 1024, gt=0, description="Largest HTTP request body.")
    max_batch_size: int = Field(1000, gt=0, description="Most jobs in one POST /jobs/batch.")
    submit_group_commit: bool = Field(
        True, description="POST /jobs requests of one API process committed together (group commit)."
    )
    submit_group_wait_ms: float = Field(
        2.0, ge=0, description="Longest a group waits for more POST /jobs requests (only while several arrive)."
    )
    submit_group_max_rows: int = Field(100, gt=0, description="Most jobs committed in one group.")
    submit_group_queue: int = Field(
        256, gt=0, description="Most POST /jobs requests waiting for a group commit; more get 503 overloaded."
    )
    submit_commit_timeout_seconds: float = Field(
        10.0, gt=0, description="Longest a POST /jobs request waits for its group commit; then 503 commit_timeout."
    )
    api_key_cache_seconds: float = Field(30.0, ge=0, description="How long the API trusts a checked key.")
    ledger_retry_after_seconds: int = Field(5, gt=0, description="Retry-After when the ledger is down.")
    metrics_token: str = Field(
        "", description="Bearer token every /metrics (API, worker, control) requires; empty: /metrics is open."
    )

    # the console (/console): sessions signed in with an API key
    console_session_seconds: float = Field(
        8 * 3600.0,
        gt=0,
        description="A console session ends this long after its sign-in (and at once if its key is revoked).",
    )
    console_secure_cookie: bool = Field(
        False,
        description="Mark the console's session cookie Secure (browsers then send it over HTTPS only): on behind TLS.",
    )
    flower_url: str = Field(
        "", description="Where operators reach Flower (e.g. http://flower.example:5555); the console links to it."
    )

    # live updates (WS /jobs/stream)
    ws_ping_seconds: float = Field(20.0, gt=0, description="Protocol ping interval of a job stream (uvicorn flag).")
    ws_ping_timeout_seconds: float = Field(20.0, gt=0, description="Stream peer silent this long after a ping: closed.")
    ws_max_connections: int = Field(1000, gt=0, description="Streams one API process serves; more: close 1013.")
    ws_max_connections_per_key: int = Field(100, gt=0, description="Streams one API key may hold per process (4429).")
    ws_max_message_bytes: int = Field(
        4096, ge=256, description="Largest message a stream client may send (the key); larger: closed 1009."
    )
    ws_auth_timeout_seconds: float = Field(
        5.0, gt=0, description="Longest a stream socket without a Bearer header may wait for its key message (4401)."
    )
    ws_max_unauthenticated: int = Field(
        100, gt=0, description="Stream sockets of one API process not authenticated yet; more: close 1013 unread."
    )
    ws_max_lifetime_seconds: float = Field(
        3600.0, gt=0, description="A stream is closed (4000, resume with since) after 90-100 % of this."
    )
    ws_replay_max_per_process: int = Field(
        4, gt=0, description="Replay reads (since=) in flight per API process, each on its own thread; more wait."
    )
    ws_replay_max_per_key: int = Field(
        2, gt=0, description="Replay reads one API key may have in flight per API process; more wait their turn."
    )
    ws_max_job_ids: int = Field(100, gt=0, description="Most job_id filters on one stream (4400 past it).")
    ws_client_queue: int = Field(1000, gt=0, description="Updates queued per stream client, then coalesce.")
    ws_poll_seconds: float = Field(0.15, gt=0, description="How often each API process tails job_events for streams.")
    ws_hole_wait_seconds: float = Field(
        120.0, gt=0, description="Longest a stream waits for an uncommitted lower event id; then it sends resync."
    )

    dev_key_file: str = Field(
        ".medic/dev-key", description="Where `medic up` keeps its dev API key (mode 0600; relative to the cwd)."
    )

    # operations: metrics, health and alerts (docs/operations.md)
    metrics_port: int | None = Field(
        None, ge=0, description="Port a worker's main process serves /metrics on (default 9808; 9809 control; 0: off)."
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description="Address a worker's /metrics listens on (loopback; another address needs MEDIC_METRICS_TOKEN "
        "under MEDIC_PROFILE=production).",
    )
    liveness_file: str = Field(
        "",
        description="File a worker's, control worker's or beat's main process touches every heartbeat for its "
        "liveness probe (`medic health --live`); empty: `medic-alive` in the temp directory.",
    )
    health_period_seconds: float = Field(15.0, gt=0, description="Period of health_and_alerts.")
    schedule_period_seconds: float = Field(
        1.0, gt=0, description="Period of fire_schedules: how late past its time a schedule's fire may be made."
    )
    schedule_fire_batch: int = Field(
        100,
        ge=1,
        description="Schedules fire_schedules handles per run, and fire times per schedule (the rest next run).",
    )
    schedule_catch_up_seconds: float = Field(
        60.0,
        ge=0,
        description="Catch-up window of a schedule that sets none: after an outage, due fires older than this are "
        "skipped and counted. A window under 2 periods of fire_schedules is taken as 2 periods.",
    )
    schedule_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["beat_schedule"],
        description="Comma-separated modules whose `SCHEDULES` dict (Celery's beat_schedule shape) declares "
        "schedules in code; a module that is not there is skipped.",
    )
    schedule_code_tenant: str = Field(
        "default", description="Tenant of the schedules declared in code (`@job(schedule=...)`, beat_schedule.py)."
    )
    schedule_missed_slack_seconds: float = Field(
        30.0, gt=0, description="MedicScheduleMissed: a due fire later than its period plus this slack."
    )
    alert_for_seconds: float = Field(
        60.0, ge=0, description="How long a condition must hold before its alert fires (every rule but shedding)."
    )
    alert_for_overrides: dict[str, float] = Field(
        default_factory=dict, description='Per-alert `for` in seconds, JSON: {"MedicQueueShedding": 0}.'
    )
    alert_repeat_seconds: float = Field(3600.0, gt=0, description="A firing alert is sent again at most this often.")
    alert_webhook_url: str = Field("", description="Alertmanager-style webhook for firing and resolved alerts.")
    alert_backlog_age_seconds: float = Field(300.0, gt=0, description="MedicQueueBacklogOld: oldest queued job age.")
    alert_dead_per_minute: int = Field(10, ge=0, description="MedicDeadJobsHigh: jobs ended dead in the last minute.")
    alert_usage_ratio: float = Field(
        0.8, gt=0, le=1, description="Pool, PostgreSQL connections, Redis memory: alert above this share of the limit."
    )
    slow_request_ms: float = Field(1000.0, gt=0, description="A request slower than this is logged; API p95 alert.")
    log_format: Literal["console", "json"] = Field("console", description="Log lines as text or as JSON.")
    log_quiet: bool = Field(False, description="Celery's per-task and beat INFO lines off (`medic up` sets it).")

    # Flower
    flower_user: str = Field("medic", description="Flower basic-auth user (no ',' or ':').")
    flower_password: str = Field(
        "", description="Flower basic-auth password (no ','); `medic flower` refuses to start without one."
    )
    allow_weak_secrets: bool = Field(
        False,
        description="Let `MEDIC_PROFILE=production` accept placeholder or short secrets (`medic up` sets it: "
        "one host, on loopback).",
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("profile") == "fast":
            return {**FAST_PROFILE, **data}
        return data

    def dispatched(self, queue: str) -> bool:
        """Whether the dispatcher starts every job of `queue` (MEDIC_DISPATCH_QUEUES)."""
        return queue in self.dispatch_queues or "*" in self.dispatch_queues

    def tenant_queued_cap(self, tenant: str) -> tuple[int, str]:
        """(most waiting (queued or held) jobs `tenant` may have, the setting it comes from)."""
        own = self.tenant_limits.get(tenant)
        if own is not None and own.queued is not None:
            return own.queued, "MEDIC_TENANT_LIMITS"
        return self.tenant_queued_quota, "MEDIC_TENANT_QUEUED_QUOTA"

    def tenant_max_timeout(self, tenant: str) -> tuple[float, str]:
        """(longest timeout `tenant` may ask for, the setting it comes from)."""
        own = self.tenant_limits.get(tenant)
        if own is not None and own.max_timeout_seconds is not None:
            return own.max_timeout_seconds, "MEDIC_TENANT_LIMITS"
        return self.max_job_timeout_seconds, "MEDIC_MAX_JOB_TIMEOUT_SECONDS"

    def tenant_max_attempts(self, tenant: str) -> tuple[int, str]:
        """(most attempts `tenant` may ask for, the setting it comes from)."""
        own = self.tenant_limits.get(tenant)
        if own is not None and own.max_attempts is not None:
            return own.max_attempts, "MEDIC_TENANT_LIMITS"
        return self.max_job_attempts, "MEDIC_MAX_JOB_ATTEMPTS"

    def tenant_weight(self, tenant: str) -> float:
        return max(self.tenant_weights.get(tenant, 1.0), 0.001)

    @model_validator(mode="after")
    def _heartbeat_within_presence(self) -> Settings:
        """A heartbeat refreshes the presence key and the leases: one slower than the presence
        TTL lets a live worker's presence lapse between beats, and recovery takes its jobs."""
        if self.heartbeat_seconds >= self.presence_ttl_seconds:
            raise ValueError(
                f"MEDIC_HEARTBEAT_SECONDS ({self.heartbeat_seconds:g}) must be shorter than "
                f"MEDIC_PRESENCE_TTL_SECONDS ({self.presence_ttl_seconds:g}): a live worker's presence "
                "would lapse between its beats and recovery would take its running jobs"
            )
        return self

    @model_validator(mode="after")
    def _stall_longer_than_heartbeat(self) -> Settings:
        """The stall watchdog looks once per heartbeat: a threshold within one beat would call a
        consumer stalled on a single look, before it had a chance to take the message."""
        if self.consumer_stall_seconds <= self.heartbeat_seconds:
            raise ValueError(
                f"MEDIC_CONSUMER_STALL_SECONDS ({self.consumer_stall_seconds:g}) must be longer than "
                f"MEDIC_HEARTBEAT_SECONDS ({self.heartbeat_seconds:g}): the watchdog looks once per heartbeat"
            )
        return self

    @model_validator(mode="after")
    def _presence_shorter_than_lease(self) -> Settings:
        """Recovery takes a job whose lease expired only when its worker's presence is gone: a
        presence that outlives the lease would let a dead worker's job wait for the TTL instead,
        and a job claimed just before a beat must be in the presence before its lease can expire."""
        if self.presence_ttl_seconds >= self.lease_seconds:
            raise ValueError(
                f"MEDIC_PRESENCE_TTL_SECONDS ({self.presence_ttl_seconds:g}) must be shorter than "
                f"MEDIC_LEASE_SECONDS ({self.lease_seconds:g}): a worker's presence must lapse before "
                "its jobs' leases do, or recovery of a dead worker's jobs waits on the presence"
            )
        return self

    @model_validator(mode="after")
    def _no_demo_jobs_in_production(self) -> Settings:
        """The demo jobs let any tenant with a submit key kill a worker child (`examples.crash`) or
        hold a slot as long as it likes (`examples.sleep`): not in production unless asked for."""
        if self.profile == "production" and EXAMPLE_JOBS in self.job_modules and not self.allow_example_jobs:
            raise ValueError(
                f"MEDIC_JOB_MODULES names {EXAMPLE_JOBS}, medic's demo jobs (examples.crash kills a worker "
                "child, examples.sleep holds a slot as long as asked), and MEDIC_PROFILE is production: "
                "name your own job modules, or set MEDIC_ALLOW_EXAMPLE_JOBS=true for a demo"
            )
        return self

    @field_validator("job_modules", "queues", "schedule_modules", "dispatch_queues", mode="before")
    @classmethod
    def _split_modules(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            return json.loads(text) if text.startswith("[") else [m.strip() for m in text.split(",") if m.strip()]
        return value

    @field_validator("database_url")
    @classmethod
    def _psycopg2_driver(cls, value: str) -> str:
        """medic's ledger code speaks psycopg2 (its async-commit prefix is a second statement in
        the same query string, which psycopg 3's extended protocol refuses). SQLAlchemy 2.1 maps
        a bare `postgresql://` to psycopg 3, so name the driver here instead of failing later."""
        scheme, sep, rest = value.partition("://")
        if scheme in ("postgresql", "postgres"):
            return f"postgresql+psycopg2{sep}{rest}"
        if scheme.startswith("postgresql+") and scheme != "postgresql+psycopg2":
            raise ValueError(
                f"MEDIC_DATABASE_URL uses the driver {scheme.split('+', 1)[1]!r}; medic runs on psycopg2: "
                "use postgresql+psycopg2://..."
            )
        return value

    @model_validator(mode="after")
    def _sentinel_needs_a_master(self) -> Settings:
        """kombu and redis-py both need the master's name to ask the Sentinels where it is; a
        master name without Sentinels would be silently ignored."""
        if is_sentinel_url(self.redis_url):
            sentinel_nodes(self.redis_url)  # raises on a malformed list
            if not self.redis_sentinel_master:
                raise ValueError(
                    "MEDIC_REDIS_URL names Sentinels (sentinel://...) but MEDIC_REDIS_SENTINEL_MASTER is empty: "
                    "set it to the master name of sentinel.conf (`sentinel monitor <name> ...`)"
                )
        elif self.redis_sentinel_master:
            raise ValueError(
                f"MEDIC_REDIS_SENTINEL_MASTER is {self.redis_sentinel_master!r} but MEDIC_REDIS_URL is not a "
                "sentinel:// URL: list the Sentinels (sentinel://host:26379;sentinel://host2:26379) or unset it"
            )
        return self

    @field_validator("broker_url")
    @classmethod
    def _known_broker(cls, value: str) -> str:
        if value and broker_kind(value) is None:
            raise ValueError(
                f"MEDIC_BROKER_URL {redact_password(value)!r} names no broker medic runs on: "
                "use amqp://user:password@host:5672/vhost (RabbitMQ), or leave it empty for MEDIC_REDIS_URL's Redis"
            )
        return value

    @property
    def broker(self) -> str:
        """The broker URL Celery and the publisher use: MEDIC_BROKER_URL, else MEDIC_REDIS_URL."""
        return self.broker_url or self.redis_url

    @property
    def on_rabbitmq(self) -> bool:
        return broker_kind(self.broker) == AMQP

    @field_validator("flower_password")
    @classmethod
    def _refuse_placeholder(cls, value: str) -> str:
        if value.lower() in PLACEHOLDER_SECRETS - {"medic-dev"}:
            raise ValueError("MEDIC_FLOWER_PASSWORD is a placeholder; set a real one")
        return value

    @field_validator("flower_user", "flower_password")
    @classmethod
    def _no_comma_for_flower(cls, value: str, info: ValidationInfo) -> str:
        """Flower splits its basic-auth option on ',' into several `user:password` entries and
        lets in any of them: the password `Tr0ub4dor,3` would let `Basic base64("3")` in."""
        name = f"MEDIC_{(info.field_name or '').upper()}"
        if "," in value:
            raise ValueError(f"{name} contains ',', which Flower reads as a second credential: remove it")
        if info.field_name == "flower_user" and ":" in value:
            raise ValueError(f"{name} contains ':', which separates the user from the password: remove it")
        return value

    @model_validator(mode="after")
    def _no_weak_secrets_in_production(self) -> Settings:
        """Placeholders (`change-me-*`, `medic-dev`) and short secrets pass a demo, not a deployment."""
        if self.profile != "production" or self.allow_weak_secrets:
            return self
        problems = [f"{name}: {why}" for name, value in self.secrets().items() if value and (why := weak(value))]
        if problems:
            raise ValueError(
                "weak secrets under MEDIC_PROFILE=production (" + "; ".join(problems) + "): set real ones, "
                f"at least {MIN_SECRET_LENGTH} characters (MEDIC_ALLOW_WEAK_SECRETS=true for a demo only)"
            )
        return self

    @model_validator(mode="after")
    def _metrics_off_loopback_need_a_token(self) -> Settings:
        """A worker's /metrics on another address than loopback is readable by the network."""
        if self.profile == "production" and not self.metrics_token and not is_loopback(self.metrics_host):
            raise ValueError(
                f"MEDIC_METRICS_HOST is {self.metrics_host} and MEDIC_METRICS_TOKEN is empty: a worker's /metrics "
                "would be open to the network; set the token (Prometheus sends it) or listen on 127.0.0.1"
            )
        return self

    def secrets(self) -> dict[str, str]:
        """Every secret setting, by its variable (a URL's password counts)."""
        return {
            "MEDIC_FLOWER_PASSWORD": self.flower_password,
            "MEDIC_METRICS_TOKEN": self.metrics_token,
            "MEDIC_DATABASE_URL password": url_password(self.database_url),
            "MEDIC_REDIS_URL password": url_password(self.redis_url.split(";", 1)[0]),
            "MEDIC_REDIS_SENTINEL_PASSWORD": self.redis_sentinel_password,
        }


def weak(secret: str) -> str | None:
    """Why `secret` is no secret (a placeholder, too short), or None."""
    lowered = secret.lower()
    if lowered in PLACEHOLDER_SECRETS or lowered.startswith(PLACEHOLDER_PREFIXES):
        return "a placeholder"
    if len(secret) < MIN_SECRET_LENGTH:
        return f"{len(secret)} characters, fewer than {MIN_SECRET_LENGTH}"
    return None


def url_password(url: str) -> str:
    """The password in a URL (`scheme://user:password@host/...`), or ''."""
    return urlsplit(url).password or ""


AMQP = "amqp"
REDIS = "redis"
_BROKER_SCHEMES = {"amqp": AMQP, "amqps": AMQP, "pyamqp": AMQP, "redis": REDIS, "rediss": REDIS, "sentinel": REDIS}


def broker_kind(url: str) -> str | None:
    """`amqp` (RabbitMQ) or `redis` by the URL's scheme; None for a broker medic does not run on."""
    return _BROKER_SCHEMES.get(url.split("://", 1)[0].lower()) if "://" in url else None


def is_sentinel_url(url: str) -> bool:
    return url.startswith(SENTINEL_SCHEME)


def sentinel_nodes(url: str) -> list[tuple[str, int]]:
    """The (host, port) of every Sentinel in `sentinel://h1:p1;sentinel://h2:p2` (kombu's form: the
    first may carry the master's password and the database).

    Raises:
        ValueError: a part is not a sentinel:// address with a host.
    """
    nodes = []
    for part in url.split(";"):
        parts = urlsplit(part.strip())
        try:
            port = parts.port or DEFAULT_SENTINEL_PORT
        except ValueError:
            port = 0
        if parts.scheme != "sentinel" or not parts.hostname or not port:
            raise ValueError(
                f"MEDIC_REDIS_URL part {redact_password(part.strip())!r} is not a Sentinel address: "
                "write sentinel://host:port, several joined by ';'"
            )
        nodes.append((parts.hostname, port))
    return nodes


def redact_password(url: str) -> str:
    password = url_password(url)
    return url.replace(f":{password}@", ":***@") if password else url


def is_loopback(host: str) -> bool:
    return host == "localhost" or host.startswith("127.") or host == "::1"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    return Settings()


def reset_settings() -> None:
    """Forget cached settings (tests and the CLI change the environment)."""
    get_settings.cache_clear()
