"""The broker side: the Celery app, publishing deliveries (the outbox's second half), what the
broker holds (read with kombu's key layout), medic's own Redis client, every Redis key name,
worker presence, per-queue counters, and the Lua scripts. Above the ledger: a refused publish is
written back to it."""
