"""A TCP forwarder inside a worker host that can add latency and jitter to everything the host
sends to and receives from the data host: the nemesis's `tc netem delay 100ms 50ms`, in user
space, because this machine's kernel has no sch_netem (`tc qdisc ... netem` answers "Specified
qdisc kind is unknown").

    python -m tests.nemesis.delayproxy CONTROL_FILE LISTEN_PORT:UPSTREAM_HOST:UPSTREAM_PORT ...

Listens on 127.0.0.1:LISTEN_PORT for each mapping. While CONTROL_FILE holds "MS JITTER_MS",
every chunk in either direction is held MS +- JITTER_MS (uniform) before it is passed on, in
order (a chunk never overtakes the one before it, as on one TCP stream); an empty or missing
file means no delay. The file is read every 200 ms, so a fault starts and ends within that."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
from pathlib import Path

CHUNK = 65536


class Delay:
    def __init__(self, control: Path) -> None:
        self.control = control
        self.ms = 0.0
        self.jitter_ms = 0.0

    async def watch(self) -> None:
        while True:
            try:
                parts = self.control.read_text().split()
                self.ms, self.jitter_ms = (float(parts[0]), float(parts[1])) if len(parts) == 2 else (0.0, 0.0)
            except (OSError, ValueError):
                self.ms, self.jitter_ms = 0.0, 0.0
            await asyncio.sleep(0.2)

    def sample(self) -> float:
        if self.ms <= 0:
            return 0.0
        return max(0.0, self.ms + random.uniform(-self.jitter_ms, self.jitter_ms)) / 1000


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: Delay) -> None:
    """Copy one direction; each chunk is due at max(now + sampled delay, the previous chunk's due)."""
    due = 0.0
    try:
        while data := await reader.read(CHUNK):
            wait = delay.sample()
            if wait or due > time.monotonic():
                due = max(time.monotonic() + wait, due)
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve(port: int, upstream: tuple[str, int], delay: Delay) -> None:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(*upstream)
        except OSError:
            w.close()
            return
        await asyncio.gather(pipe(r, uw, delay), pipe(ur, w, delay))

    server = await asyncio.start_server(handle, "127.0.0.1", port, reuse_address=True)
    async with server:
        await server.serve_forever()


async def main(control: Path, mappings: list[str]) -> None:
    delay = Delay(control)
    tasks = [asyncio.create_task(delay.watch())]
    for mapping in mappings:
        port, host, up_port = mapping.split(":")
        tasks.append(asyncio.create_task(serve(int(port), (host, int(up_port)), delay)))
    print("proxy ready", flush=True)
    await asyncio.gather(*tasks)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2:]))
