"""medic's tests: one folder per package room (ledger, runtime, control, api, ops), plus chaos/."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
