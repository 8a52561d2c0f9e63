"""The job ledger: the truth about every job. Tables (`models`), the state machine (`states`),
every write of a job's state (`transitions`), every read of jobs (`queries`), API keys, the control
plane's decisions and durable facts, and migrations. Imports nothing else of medic but settings,
errors and clock."""
