"""`python -m worker.ops.prefix NAME -- ARGV...`: run ARGV with each output line prefixed by NAME.

`medic up` runs every child through this, so one terminal shows whose line is whose. The wrapper
stays in the child's process group and forwards no signal: the supervisor signals the whole group
(killpg), so the real process gets each signal exactly once. It exits with the child's code once
the child is gone (the prefork grandchildren may hold the pipe a moment longer; their last lines
are read for a second, not waited for).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

WIDTH = 9


def _pump(stream: object, prefix: bytes) -> None:
    for line in iter(stream.readline, b""):  # type: ignore[attr-defined]
        sys.stdout.buffer.write(prefix + line)
        sys.stdout.buffer.flush()


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m worker.ops.prefix NAME -- ARGV...", file=sys.stderr)
        return 2
    name, cmd = argv[0], argv[2:]
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        # A no-op handler, not SIG_IGN: exec resets handlers to the default but keeps SIG_IGN,
        # and the child must still die of the group's signal.
        signal.signal(sig, lambda *_: None)
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pump = threading.Thread(target=_pump, args=(child.stdout, f"{name:<{WIDTH}}| ".encode()), daemon=True)
    pump.start()
    code = child.wait()
    pump.join(timeout=1.0)
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
