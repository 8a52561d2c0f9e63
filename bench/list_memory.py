"""Peak memory of one `GET /jobs?limit=500` over 500 jobs whose args are 64 KB JSON objects.

`python -m bench.list_memory [--with-fields] [--out FILE]` starts one API process on a private database, writes the jobs
directly (each args object ~7,600 small keys, just under MEDIC_MAX_PAYLOAD_BYTES), and reads the
API process's peak RSS (VmHWM) before and after each request: the growth is what one list
request cost. It prints JSON: the plain list (args and result left out by default) and the list
that asks for them (`fields=args,result`), whose page holds at most 50 jobs (FULL_PAGE_MAX).
"""

from __future__ import annotations

import argparse
import json
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.common import MedicRun, header

JOBS = 500
KEYS = 7600  # "1a2b":0 -> ~9 bytes each: ~64 KB of JSON per job, just under the args cap


def vm_hwm_mb(pid: int) -> float:
    """Peak RSS of a process so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise ValueError(f"no VmHWM for {pid}")


def big_args() -> dict[str, Any]:
    return {"data": {f"{i:x}": 0 for i in range(KEYS)}}


def fill(tenant: str) -> int:
    """Write JOBS jobs of `tenant` with ~64 KB object args; returns one job's args size in bytes."""
    from tests.ledger.make import a_new_job
    from worker.clock import utcnow
    from worker.ledger import db, transitions

    args = big_args()
    with db.begin() as conn:
        news = [a_new_job(tenant, args=args, id=uuid.uuid4()) for _ in range(JOBS)]
        transitions.create_jobs(conn, news, actor="bench", now=utcnow())
    return len(json.dumps(args, separators=(",", ":")))


def measure(url: str, key: str, pid: int, query: str) -> dict[str, Any]:
    before = vm_hwm_mb(pid)
    response = httpx.get(f"{url}/jobs?{query}", headers={"Authorization": f"Bearer {key}"}, timeout=300)
    response.raise_for_status()
    after = vm_hwm_mb(pid)
    return {
        "query": query,
        "jobs": len(response.json()["jobs"]),
        "response_bytes": len(response.content),
        "peak_rss_before_mb": before,
        "peak_rss_after_mb": after,
        "peak_growth_mb": round(after - before, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--with-fields", action="store_true", help="also a page of 50 with fields=args,result")
    parser.add_argument("--out", help="write the report here too (JSON)")
    opts = parser.parse_args()
    report = header("list_memory")
    with MedicRun("fast") as medic:
        tenant = "bench-list"
        key = medic.api_key(tenant, "read")
        size = fill(tenant)
        proc, url = medic.procs.api("list-api")
        httpx.get(f"{url}/jobs?limit=1", headers={"Authorization": f"Bearer {key}"}, timeout=30)  # warm
        runs = [measure(url, key, proc.pid, f"limit={JOBS}")]
        if opts.with_fields:
            runs.append(measure(url, key, proc.pid, "limit=50&fields=args,result"))
    report.update({"jobs": JOBS, "args_bytes_each": size, "runs": runs})
    text = json.dumps(report, indent=2)
    print(text)
    if opts.out:
        Path(opts.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
