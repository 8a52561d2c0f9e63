"""Control loops: plain functions over the ledger and the broker, wrapped as Celery tasks in
`worker.control.tasks` and scheduled by `beat_schedule.py`."""
