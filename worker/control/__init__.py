"""The control plane: loops that are plain functions of `now` over the ledger and the broker
(recover, timeouts, reconcile, backpressure, autoscale, prune), wrapped as Celery tasks in `tasks`
and scheduled by `schedule`; and admission, the API's side of backpressure."""
