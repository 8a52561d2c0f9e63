"""`medic up`'s console: each child's lines prefixed by its name, no Celery banner, no root
warning, no per-task chatter, and the banner (URLs, key) printed last, once every piece is ready."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from pathlib import Path

from tests import ROOT
from worker.testing.processes import free_port, wait_for
from worker.testing.servers import delete_keys


def test_medic_up_console_is_short_and_ends_with_the_banner(medic_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "up.log"
    # Keys of its own: the session's shared worker also consumes `default`, and medic up's banner
    # waits for a registered consumer of it; on the shared prefix it would not wait for worker-1.
    run = uuid.uuid4().hex[:8]
    own_prefixes = {"MEDIC_KEY_PREFIX": f"mtc{run}:", "MEDIC_BROKER_KEY_PREFIX": f"mtcb{run}:"}
    with open(out, "w") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "worker.ops.cli", "up", "--api-port", str(free_port()), "--no-flower"],
            env={**medic_env, **own_prefixes, "MEDIC_DEV_KEY_FILE": str(tmp_path / "key"), "MEDIC_METRICS_PORT": "0"},
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            text = wait_for(lambda: "Ctrl-C stops everything" in (t := out.read_text()) and t, 90, 0.2, "banner")
        finally:
            up.send_signal(signal.SIGINT)
            up.wait(timeout=60)
    for prefix in own_prefixes.values():
        delete_keys(medic_env["MEDIC_REDIS_URL"], prefix)
    before = text.split("\nmedic is up\n")[0].splitlines()
    assert any(ln.startswith("worker-1 | ") and "ready." in ln for ln in before), before
    assert any(ln.startswith("control  | ") and "ready." in ln for ln in before), before
    child_lines = [ln for ln in before if " | " in ln[:12]]
    assert child_lines and all(
        ln.split(" | ")[0].strip() in {"api", "worker-1", "control", "beat"} for ln in child_lines
    )
    assert "SecurityWarning" not in text and "-------------- " not in text, "no root warning, no Celery banner"
    assert "Sending due task" not in text and "] received" not in text, "no per-task chatter"
