"""medic's platform core: settings, the job ledger, the job runtime and the control loops.

`api` imports this package; nothing here imports `api`.
"""

from worker.registry import job

__all__ = ["job"]
