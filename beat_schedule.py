"""The beat schedule, at the top level so it is found at a glance: every control loop is declared
in `worker.control.registry` (its function, its period setting), and `worker.control.schedule`
makes one entry per loop on the control queue; `medic beat` installs it.

    python -c "import beat_schedule, json; print(json.dumps(beat_schedule.current(), indent=1))"
"""

from __future__ import annotations

from typing import Any

from worker.control.schedule import beat_schedule
from worker.settings import get_settings

__all__ = ["beat_schedule", "current"]


def current() -> dict[str, dict[str, Any]]:
    """The schedule under this environment's settings."""
    return beat_schedule(get_settings())
