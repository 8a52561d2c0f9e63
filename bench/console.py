"""Console: the jobs page answers in under 200 ms at p95 with 1,000,000 jobs in the ledger (issue 23).

    .venv/bin/python -m bench.console > docs/bench/console.json      # or: make bench BENCH=console
    .venv/bin/python -m bench.console --jobs 100000 --requests 40    # a quick look

The ledger is bench/scale_fill.py's mix (8 tenants, half the jobs in tenant-0, 4 queues, 2 % dead),
grown set-based, then shaped a little for the filters to have something to find: a rarer type on
one job in 50, and a customer id in the args of one tenant-0 job in 20 (the text the args filter
looks for). A real API process serves; an admin key and a read key of tenant-0 sign in through
POST /console/sign-in. Every console address below is fetched sequentially on one keep-alive
connection: warm-ups, then `--requests` timed GETs each, in rounds whose order alternates, the
machine's load read before each round. Client-side wall time, p50/p95/p99/max per address.

For each address, the statements its page sends to the ledger (the same query functions called in
this process, the SQL captured as sent) are run again under EXPLAIN (ANALYZE, BUFFERS): the plan,
the indexes it used, and its execution time go into the JSON. Prints one JSON object.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import re
import sys
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bench import scale_fill as fill
from bench.common import MedicRun, header, load_check, options, percentile_ms
from worker.settings import Settings

TARGET_P95_MS = 200.0
OTHER_TENANT = "tenant-3"
RARE_TYPE = "examples.fail"
TEXT = "cust-42"  # matches cust-42, cust-420..429, cust-4200..4299: ~2 % of the customers

# One job in 50 of another type; one tenant-0 job in 20 carries a customer id in its args.
SHAPE = """
UPDATE jobs SET
  type = CASE WHEN abs(hashtext(id::text)) % 50 = 0 THEN :rare_type ELSE type END,
  args = CASE WHEN tenant = :big AND abs(hashtext(id::text)) % 20 = 1
              THEN jsonb_build_object('message', 'an order of a customer',
                                      'customer', 'cust-' || (abs(hashtext(id::text) / 20) % 5000))
              ELSE args END
WHERE abs(hashtext(id::text)) % 50 = 0 OR (tenant = :big AND abs(hashtext(id::text)) % 20 = 1)
"""
PG_SETTINGS = ("shared_buffers", "work_mem", "effective_cache_size", "random_page_cost", "jit", "server_version")
ROW = re.compile(r'href="/console/jobs/[0-9a-f-]{36}')
USING = re.compile(r"(?:Scan(?: Backward)? using|Bitmap Index Scan on) (\w+)")
SEQ = re.compile(r"Seq Scan on (\w+)")
EXEC = re.compile(r"Execution Time: ([\d.]+) ms")


@dataclass(frozen=True)
class Variant:
    """One address, the session that fetches it, and the ledger reads its page makes."""

    path: str
    who: str  # "read" (tenant-0's read key), "admin" (an admin key of tenant-0) or "bearer" (JSON API)
    reads: Callable[[Connection], object]
    expect: str  # what the page must say: a row link or a text


def shape() -> float:
    """The rarer type and the customer ids written over the fill; seconds (settle() vacuums after)."""
    from worker.ledger import db

    started = time.monotonic()
    with db.begin() as conn:
        conn.execute(sa.text(SHAPE), {"rare_type": RARE_TYPE, "big": fill.BIG_TENANT})
    return round(time.monotonic() - started, 1)


def picks() -> dict[str, Any]:
    """A dead job of tenant-0 (the job page), and the ledger's time span (the windows)."""
    from worker.ledger import db

    with db.connect() as conn:
        dead_id = conn.scalar(
            sa.text("SELECT id FROM jobs WHERE tenant = :t AND state = 'dead' ORDER BY created_at DESC LIMIT 1"),
            {"t": fill.BIG_TENANT},
        )
        first, last = conn.execute(sa.text("SELECT min(created_at), max(created_at) FROM jobs")).one()
    return {"dead_job": dead_id, "oldest": first, "newest": last}


def variants(key_of: dict[str, Any], chosen: dict[str, Any], cursor: str) -> dict[str, Variant]:
    """Every address timed, with the reads its page makes (JobFilter built as the page builds it)."""
    from api.console import filters
    from api.routes.jobs import _decode_cursor
    from worker.ledger import queries

    def match(params: dict[str, str], who: str = "read") -> queries.JobFilter:
        return filters.job_filter(params, key_of[who])

    def page(params: dict[str, str], who: str = "read", before: Any = None) -> Callable[[Connection], object]:
        return lambda c: queries.page(c, match(params, who), limit=50, before=before, payloads=frozenset())

    middle = chosen["oldest"] + (chosen["newest"] - chosen["oldest"]) / 2
    hour = {"created_after": _iso(middle), "created_before": _iso(middle + dt.timedelta(hours=1))}
    day = {"args_contains": TEXT, "created_after": _iso(middle - dt.timedelta(days=5)),
           "created_before": _iso(middle - dt.timedelta(days=4))}  # fmt: skip
    queue = fill.QUEUES[1]
    dead = chosen["dead_job"]
    confirm = {"action": "retry", "state": "dead"}

    def count(c: Connection) -> object:
        return queries.count_matching(c, match(confirm, "admin"), up_to=10_001, states=queries.RETRYABLE)

    def job(c: Connection) -> object:
        return queries.get_job(c, dead, fill.BIG_TENANT), queries.get_events(c, dead)

    return {
        "newest": Variant("/console/jobs", "read", page({}), "row"),
        "state_dead": Variant("/console/jobs?state=dead", "read", page({"state": "dead"}), "row"),
        "state_queued": Variant("/console/jobs?state=queued", "read", page({"state": "queued"}), "row"),
        "type": Variant(f"/console/jobs?type={RARE_TYPE}", "read", page({"type": RARE_TYPE}), "row"),
        "queue": Variant(f"/console/jobs?queue={queue}", "read", page({"queue": queue}), "row"),
        "created_1h": Variant("/console/jobs?" + _q(hour), "read", page(hour), "row"),
        "page_2": Variant(
            "/console/jobs?" + _q({"cursor": cursor}), "read", page({}, before=_decode_cursor(cursor)), "row"
        ),
        "args_contains_1d": Variant("/console/jobs?" + _q(day), "read", page(day), "row"),
        "admin_other_tenant": Variant(
            f"/console/jobs?tenant={OTHER_TENANT}", "admin", page({"tenant": OTHER_TENANT}, "admin"), "row"
        ),
        "job_page": Variant(f"/console/jobs/{dead}", "read", job, "Timeline"),
        "confirm_retry_dead": Variant("/console/jobs/confirm?" + _q(confirm), "admin", count, "match"),
        "api_jobs_limit_50": Variant(
            "/jobs?limit=50", "bearer", lambda c: queries.page(c, match({}), limit=50, payloads=frozenset()), "jobs"
        ),
    }


def _iso(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).replace(microsecond=0).isoformat()


def _q(params: dict[str, str]) -> str:
    return urllib.parse.urlencode(params)


def sign_in(url: str, raw_key: str) -> httpx.Client:
    """A keep-alive client holding the console session `raw_key` signs in to."""
    with httpx.Client(base_url=url, timeout=10.0) as client:
        resp = client.post("/console/sign-in", data={"api_key": raw_key}, headers={"Origin": url})
    assert resp.status_code == 303, (resp.status_code, resp.text[:500])
    token = resp.cookies.get("medic_session")
    assert token, resp.headers
    return httpx.Client(base_url=url, timeout=30.0, follow_redirects=False, cookies={"medic_session": token})


def older_cursor(client: httpx.Client) -> str:
    """The cursor of the newest page's "Older jobs" link."""
    body = client.get("/console/jobs").text
    found = re.search(r'rel="next" href="([^"]+)"', body)
    assert found, body[:2000]
    link = urllib.parse.urlsplit(html.unescape(found.group(1)))
    return urllib.parse.parse_qs(link.query)["cursor"][0]


def answer(name: str, v: Variant, resp: httpx.Response) -> dict[str, Any]:
    """What the last response said, and whether it is a real answer (not a sign-in redirect)."""
    out: dict[str, Any] = {"status": resp.status_code, "bytes": len(resp.content)}
    if v.who == "bearer":
        out["rows"] = len(resp.json()["jobs"]) if resp.status_code == 200 else None
        out["answered"] = out["rows"] == 50
    elif v.expect == "row":
        out["rows"] = len(ROW.findall(resp.text))
        out["answered"] = resp.status_code == 200 and out["rows"] > 0
    else:
        text = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", resp.text)).split())
        if name == "confirm_retry_dead":
            said = re.search(r"(More than [\d,]+|[\d,]+) dead jobs? match", text)
            out["says"] = said.group(0) if said else None
        out["answered"] = resp.status_code == 200 and v.expect in text
    return out


def time_all(clients: dict[str, httpx.Client], vs: dict[str, Variant], requests: int, rounds: int) -> dict[str, Any]:
    """Warm-ups, then `requests` GETs per address in `rounds` blocks, the order reversed every other round."""
    times: dict[str, list[float]] = {name: [] for name in vs}
    statuses: dict[str, dict[str, int]] = {name: {} for name in vs}
    for v in vs.values():
        for _ in range(5):
            clients[v.who].get(v.path)
    per_round, loads = requests // rounds, []
    for r in range(rounds):
        order = list(vs) if r % 2 == 0 else list(reversed(vs))
        loads.append({"round": r, "first": order[0], **load_check()})
        for name in order:
            v, client = vs[name], clients[vs[name].who]
            for _ in range(per_round):
                started = time.perf_counter()
                resp = client.get(v.path)
                times[name].append(time.perf_counter() - started)
                statuses[name][str(resp.status_code)] = statuses[name].get(str(resp.status_code), 0) + 1
        print(f"round {r} done", file=sys.stderr)
    out: dict[str, Any] = {}
    for name, v in vs.items():
        last = clients[v.who].get(v.path)
        p95 = percentile_ms(times[name], 0.95)
        out[name] = {
            "path": v.path,
            "session": v.who,
            "requests": len(times[name]),
            "p50_ms": percentile_ms(times[name], 0.5),
            "p95_ms": p95,
            "p99_ms": percentile_ms(times[name], 0.99),
            "max_ms": percentile_ms(times[name], 1.0),
            "statuses": statuses[name],
            "answer": answer(name, v, last),
            "meets_target": p95 is not None and p95 < TARGET_P95_MS and set(statuses[name]) == {"200"},
        }
    return {"load_before_each_round": loads, "variants": out}


def plans(vs: dict[str, Variant], token: str) -> dict[str, Any]:
    """Each page's ledger statements as sent, run again under EXPLAIN (ANALYZE, BUFFERS)."""
    from worker.clock import utcnow
    from worker.ledger import sessions

    out = {name: explain_all(v.reads) for name, v in vs.items()}
    # every console page first reads its session back (api/deps.find_session)
    out["every_console_page_session"] = explain_all(lambda c: sessions.find_session(c, token, now=utcnow()))
    return out


def explain_all(call: Callable[[Connection], object]) -> list[dict[str, Any]]:
    from worker.ledger import db
    from worker.ledger.db import as_written

    sent: list[tuple[str, Any]] = []

    def grab(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        sent.append((as_written(statement), parameters))

    with db.connect() as conn:
        sa.event.listen(conn, "before_cursor_execute", grab)
        try:
            call(conn)
        finally:
            sa.event.remove(conn, "before_cursor_execute", grab)
        out = []
        for statement, parameters in sent:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            cur: Any = raw.cursor()
            try:  # the statement with its values written in, as the server saw it
                sql = cur.mogrify(statement, parameters).decode()
                cur.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT TEXT) {sql}")
                lines = [r[0] for r in cur.fetchall()]
            finally:
                cur.close()
            plan = "\n".join(lines)
            found = EXEC.search(plan)
            out.append({
                "sql": " ".join(sql.split()),
                "indexes": sorted(set(USING.findall(plan))),
                "seq_scans": sorted(set(SEQ.findall(plan))),
                "execution_ms": float(found.group(1)) if found else None,
                "plan": lines,
            })  # fmt: skip
    return out


def settings_of() -> dict[str, Any]:
    from worker.ledger import db
    from worker.settings import get_settings

    s = get_settings()
    medic = {k: getattr(s, k) for k in ("db_pool_size", "db_statement_timeout_ms") if hasattr(s, k)}
    with db.connect() as conn:
        pg = {name: conn.exec_driver_sql(f"SHOW {name}").scalar() for name in PG_SETTINGS}
    return {"bench_process": medic, "postgresql": pg, "page_size": 50, "confirm_count_up_to": 10_001}


def main() -> None:
    args = options(__doc__, jobs=1_000_000, requests=200, rounds=4, note="")
    from worker.ledger import db

    started = time.monotonic()
    # The fill's chunks may outlast the ledger's statement timeout on a busy machine: off in this
    # process (the fill, the plans); the API process serves with the default.
    served_timeout = os.environ.get("MEDIC_DB_STATEMENT_TIMEOUT_MS") or str(
        Settings.model_fields["db_statement_timeout_ms"].default
    )
    medic = MedicRun("production", {"MEDIC_DB_STATEMENT_TIMEOUT_MS": "0"}, run=f"cons{uuid.uuid4().hex[:8]}")
    report: dict[str, Any] = {
        **header("console"),
        "note": args.note,
        "target": {"p95_ms_below": TARGET_P95_MS, "ledger_jobs": args.jobs},
        "database": medic.db_name,
        "key_prefixes": [medic.key_prefix, medic.broker_prefix],
    }
    with medic:
        fill.register_queues()
        report["fill_s"] = fill.grow(1, args.jobs)
        report["shape_s"] = shape()
        report["settle_s"] = fill.settle()
        report["ledger"] = fill.counts()
        with db.connect() as conn:
            report["ledger"]["tenant_0_args_with_text"] = conn.scalar(
                sa.text("SELECT count(*) FROM jobs WHERE tenant = :t AND args::text ILIKE :p"),
                {"t": fill.BIG_TENANT, "p": f"%{TEXT}%"},
            )
            report["ledger"]["rare_type"] = conn.scalar(sa.text("SELECT count(*) FROM jobs WHERE type = :r"),
                                                         {"r": RARE_TYPE})  # fmt: skip
        report["settings"] = settings_of()
        print(f"filled at {time.monotonic() - started:.0f}s", file=sys.stderr)
        _, url = medic.procs.api("console-api", MEDIC_DB_STATEMENT_TIMEOUT_MS=served_timeout)
        report["settings"]["api_statement_timeout_ms"] = int(served_timeout)
        raw = {
            "admin": medic.api_key(fill.BIG_TENANT, "read,admin,submit"),
            "read": medic.api_key(fill.BIG_TENANT, "read"),
        }
        from api.deps import find_key

        key_of = {who: find_key(k) for who, k in raw.items()}
        clients = {who: sign_in(url, k) for who, k in raw.items()}
        clients["bearer"] = httpx.Client(base_url=url, timeout=30.0, headers={"Authorization": f"Bearer {raw['read']}"})
        chosen = picks()
        vs = variants(key_of, chosen, older_cursor(clients["read"]))
        report["chosen"] = {"dead_job": str(chosen["dead_job"]), "oldest": _iso(chosen["oldest"]),
                            "newest": _iso(chosen["newest"]), "args_text": TEXT, "rare_type": RARE_TYPE}  # fmt: skip
        report["load_before_plans"] = load_check()
        report["plans"] = plans(vs, str(clients["read"].cookies.get("medic_session")))
        timing = time_all(clients, vs, args.requests, args.rounds)
        report["load_before_each_round"] = timing["load_before_each_round"]
        report["variants"] = timing["variants"]
        for client in clients.values():
            client.close()
    worst = max(report["variants"].items(), key=lambda kv: kv[1]["p95_ms"] or 0)
    report["verdict"] = {
        "target_p95_ms": TARGET_P95_MS,
        "ledger_jobs": report["ledger"]["jobs"],
        "worst_variant": worst[0],
        "worst_p95_ms": worst[1]["p95_ms"],
        "every_variant_answered": all(v["answer"]["answered"] for v in report["variants"].values()),
        "meets_target": all(v["meets_target"] for v in report["variants"].values()),
    }
    report["p95_ms"] = {name: v["p95_ms"] for name, v in report["variants"].items()}
    report["indexes_by_variant"] = {
        name: sorted({i for s in p for i in s["indexes"]}) for name, p in report["plans"].items()
    }
    report["logs"] = str(medic.log_dir)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
