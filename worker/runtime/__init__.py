"""Running jobs: `@job` registers a type (`registry`), the task body claims, runs and records
each delivery (`task`), one heartbeat thread per process keeps leases and presence (`heartbeat`),
and the worker's main process reports children that died or hit their hard limit (`signals`)."""
