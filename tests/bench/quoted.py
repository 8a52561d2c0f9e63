"""Where each figure the docs quote comes from (checked by tests/bench/test_figures.py).

To quote a new figure: commit the run under docs/bench/, print the figure as the JSON has it
(rounded, if at all, to fewer decimals), and add a line here. A table rendered by bench/tables.py
goes in RENDERED. A number that only looks measured (a default, a limit, a version, a bench's
own parameter) goes in ALLOWED with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.tables import TITLES, render_scale, render_throughput
from tests.bench.figures import Allowed, Quote

THROUGHPUT_RUNS = ("throughput_before.json", "throughput_stop15.json", "throughput.json")


def _throughput(reports: list[Any]) -> str:
    return render_throughput(list(zip(TITLES, reports, strict=True)))


def _scale(reports: list[Any]) -> str:
    return render_scale(reports[0])


RENDERED: list[tuple[str, Callable[[list[Any]], str], tuple[str, ...]]] = [
    ("benchmarks.md", _throughput, THROUGHPUT_RUNS),
    ("benchmarks.md", _scale, ("scale.json",)),
]

B, T, T15 = "benchmarks.md", "throughput.json", "throughput_stop15.json"
T14, T692 = "throughput_stop14.json", "throughput_692a871.json"
TB, S, SB, SA = "throughput_before.json", "scale.json", "scale_before.json", "scale_after_0005.json"
HW, HW692 = "hot_writes.json", "hot_writes_692a871.json"
E2E_OFF, E2E_ON = "end_to_end.events_off", "end_to_end.events_on"
SINGLE, BATCH = "enqueue.ratio_single_vs_plain.median", "enqueue.ratio_batch_vs_plain_batch.median"
HTTP = "http.ratio_rps_medic_vs_plain.median"
OFF, ON = f"{E2E_OFF}.ratio_medic_vs_plain.median", f"{E2E_ON}.ratio_medic_vs_plain.median"
ROUNDS = "load_before_each_round.*.loadavg_1m"
HEALTH = "sizes.{}.loops.health_and_alerts.p50_ms"

QUOTES: list[Quote] = [
    # benchmarks.md, throughput
    Quote(B, "[bench/throughput_before.json](bench/throughput_before.json), `code.head` 9f0b50c", TB, "code.head"),
    Quote(B, "1-min load 3.14", TB, "**.loadavg_1m|min"),
    Quote(B, "1-min load 3.14 to 5.35", TB, "**.loadavg_1m|max"),
    Quote(B, "`code.head` 4f10bff", T15, "code.head"),
    Quote(B, "the end of the previous stop, 1-min load 0.74", T15, "machine.load_avg_at_start.0"),
    Quote(B, "`code.head` 32fddf7", T, "code.head"),
    Quote(B, "32fddf7, `elapsed_s` 145.8", T, "elapsed_s"),
    Quote(B, "of that commit: 1-min load 0.79", T, "machine.load_avg_at_start.0"),
    Quote(B, "at its start, 0.81", T, f"enqueue.{ROUNDS}+http.{ROUNDS}|min"),
    Quote(B, "at its start, 0.81 to 1.29", T, f"enqueue.{ROUNDS}+http.{ROUNDS}|max"),
    Quote(B, "HTTP rounds and 1.62", T, f"end_to_end.*.{ROUNDS}|min"),
    Quote(B, "HTTP rounds and 1.62 to 2.08", T, f"end_to_end.*.{ROUNDS}|max"),
    Quote(B, "Met now: (a) batch, 1.103", T, BATCH),
    Quote(B, "Not met: (a) single 0.342", T, SINGLE),
    Quote(B, "(b) 0.454", T, HTTP),
    Quote(B, "(c) 0.416", T, OFF),
    Quote(B, "0.416 events off and 0.548", T, ON),
    Quote(B, "enqueue fell from 0.488", T15, SINGLE),
    Quote(B, "enqueue fell from 0.488 to 0.342", T, SINGLE),
    Quote(B, "gave 0.488", T15, SINGLE),
    Quote(B, "gave 0.488 / 0.492", T692, SINGLE),
    Quote(B, "0.492, 1.045", T15, BATCH),
    Quote(B, "1.045 / 1.156", T692, BATCH),
    Quote(B, "1.156, 0.485", T15, HTTP),
    Quote(B, "0.485 / 0.555", T692, HTTP),
    Quote(B, "0.555, 0.391", T15, OFF),
    Quote(B, "0.391 / 0.482", T692, OFF),
    Quote(B, "0.482 and 0.581", T15, ON),
    Quote(B, "0.581 / 0.595", T692, ON),
    Quote(B, "`code.head` 991228e", T14, "code.head"),
    Quote(B, "991228e) gave 0.259", T14, SINGLE),
    Quote(B, "gave 0.259, 0.602", T14, BATCH),
    Quote(B, "0.602, 0.458", T14, HTTP),
    Quote(B, "0.458, 0.461", T14, OFF),
    Quote(B, "0.461 and 0.564", T14, ON),
    # benchmarks.md, what each step bought
    Quote(B, "worker main process 1.785", T14, f"{E2E_ON}.medic.cpu_ms_per_job_median.medic_worker_main"),
    Quote(B, "worker main process 1.785 -> 1.075", T14, f"{E2E_OFF}.medic.cpu_ms_per_job_median.medic_worker_main"),
    Quote(B, "end to end 288.2", T14, f"{E2E_ON}.medic.jobs_per_s.median"),
    Quote(B, "end to end 288.2 -> 381.2", T14, f"{E2E_OFF}.medic.jobs_per_s.median"),
    Quote(B, "PostgreSQL CPU 0.725", HW, "not_prepared.postgres_cpu_ms.median"),
    Quote(B, "PostgreSQL CPU 0.725 -> 0.555", HW, "prepared.postgres_cpu_ms.median"),
    Quote(B, "wall 1.509", HW, "not_prepared.wall_ms.median"),
    Quote(B, "wall 1.509 -> 1.398", HW, "prepared.wall_ms.median"),
    Quote(B, "client CPU 0.627", HW, "not_prepared.client_cpu_ms.median"),
    Quote(B, "client CPU 0.627 -> 0.678", HW, "prepared.client_cpu_ms.median"),
    Quote(B, "the run at 692a871: 0.72", HW692, "not_prepared.postgres_cpu_ms.median"),
    Quote(B, "the run at 692a871: 0.72 -> 0.49", HW692, "prepared.postgres_cpu_ms.median"),
    Quote(B, "wall 1.506", HW692, "not_prepared.wall_ms.median"),
    Quote(B, "wall 1.506 -> 1.222", HW692, "prepared.wall_ms.median"),
    Quote(B, "batch ratio 0.602", T14, BATCH),
    Quote(B, "batch ratio 0.602 -> 1.045", T15, BATCH),
    Quote(B, "1.045 and single 0.259", T14, SINGLE),
    Quote(B, "1.045 and single 0.259 -> 0.488", T15, SINGLE),
    Quote(B, "HTTP ratio 0.458", T14, HTTP),
    Quote(B, "HTTP ratio 0.458 -> 0.485", T15, HTTP),
    Quote(B, "stop 15 (0.555", T692, HTTP),
    # benchmarks.md, where the time goes now
    Quote(B, "**A single enqueue** (0.342", T, SINGLE),
    Quote(B, "ahead of plain Celery's own batch (1.103", T, BATCH),
    Quote(B, "**The API process** (0.454", T, HTTP),
    Quote(B, "(0.454x): 3.833", T, "http.medic.cpu_ms_per_request_median.medic_api"),
    Quote(B, "process vs 1.533", T, "http.plain.cpu_ms_per_request_median.plain_api"),
    Quote(B, "only calls `apply_async`; 0.292", T, "http.medic.cpu_ms_per_request_median.postgres_all"),
    Quote(B, "The stop 15 run measured 2.833", T15, "http.medic.cpu_ms_per_request_median.medic_api"),
    Quote(B, "The stop 15 run measured 2.833 vs 1.267", T15, "http.plain.cpu_ms_per_request_median.plain_api"),
    Quote(B, "plain HTTP rate was 492.6", T, "http.plain.rps.median"),
    Quote(B, "plain HTTP rate was 492.6 against 625.6", T15, "http.plain.rps.median"),
    Quote(B, "**End to end** (0.416", T, OFF),
    Quote(B, "per job, medic spends 1.055", T, f"{E2E_OFF}.medic.cpu_ms_per_job_median.medic_worker_main"),
    Quote(B, "(plain 0.755", T, f"{E2E_OFF}.plain.cpu_ms_per_job_median.plain_worker_main"),
    Quote(B, "consumer loop), 1.48", T, f"{E2E_OFF}.medic.cpu_ms_per_job_median.medic_worker_children"),
    Quote(B, "children (plain 0.34", T, f"{E2E_OFF}.plain.cpu_ms_per_job_median.plain_worker_children"),
    Quote(B, "children (plain 0.34) and 0.85", T, f"{E2E_OFF}.medic.cpu_ms_per_job_median.postgres_all"),
    # benchmarks.md, scale
    Quote(B, "from 100k to 1M jobs and 3,045,000", S, "sizes.2.ledger.events"),
    Quote(B, "3,045,000 events in 107.2", S, "sizes.2.fill_s"),
    Quote(B, "`code.head` 692a871", S, "code.head"),
    Quote(B, "692a871, `elapsed_s` 444.2", S, "elapsed_s"),
    Quote(B, "1-min load 1.74", S, "machine.load_avg_at_start.0"),
    Quote(B, "just finished), 1.74", S, "sizes.0.load_before.loadavg_1m"),
    Quote(B, "just finished), 1.74 / 1.63", S, "sizes.1.load_before.loadavg_1m"),
    Quote(B, "just finished), 1.74 / 1.63 / 1.09", S, "sizes.2.load_before.loadavg_1m"),
    Quote(B, "(`sizes[].load_before`), 1.35", S, "rss.after_first_tenth.load.loadavg_1m"),
    Quote(B, "1.35 and 2.84", S, "rss.after_all.load.loadavg_1m"),
    Quote(B, "spends most of its 25.05", S, "sizes.0.loops.enforce_timeouts.p50_ms"),
    Quote(B, "spends most of its 25.05 to 28.95", S, "sizes.2.loops.enforce_timeouts.p50_ms"),
    Quote(B, "deadline (5,010", S, "sizes.2.ledger.jobs_running"),
    Quote(B, "median 447.3", T692, f"{E2E_OFF}.medic.jobs_per_s.median"),
    Quote(B, "[bench/throughput.json](bench/throughput.json) measures 393.5", T, f"{E2E_OFF}.medic.jobs_per_s.median"),
    Quote(B, "after the first 10,000", S, "rss.after_first_tenth.jobs_finished"),
    Quote(B, "finished (27.2", S, "rss.after_first_tenth.elapsed_s"),
    Quote(B, "after all (301.0", S, "rss.after_all.elapsed_s"),
    Quote(B, "stayed at 93.0", S, "rss.after_first_tenth.worker_main_rss_mb"),
    Quote(B, "stayed at 93.0 -> 93.1", S, "rss.after_all.worker_main_rss_mb"),
    Quote(B, "grew from 96.9", SA, "rss.after_first_tenth.worker_main_rss_mb"),
    Quote(B, "grew from 96.9 to 136.8", SA, "rss.after_all.worker_main_rss_mb"),
    Quote(B, "per queued job (10,010", S, "sizes.2.ledger.jobs_queued"),
    Quote(B, "`elapsed_s` 141.0", SB, "elapsed_s"),
    Quote(B, "141.0, 1-min load 2.09", SB, "sizes.2.load_before.loadavg_1m"),
    Quote(B, "`elapsed_s` 543.8", SA, "elapsed_s"),
    Quote(B, "543.8, 1-min load 2.67", SA, "sizes.2.load_before.loadavg_1m"),
    Quote(B, "| before: 7.91", SB, HEALTH.format(0)),
    Quote(B, "| before: 7.91 / 9.01", SB, HEALTH.format(1)),
    Quote(B, "| before: 7.91 / 9.01 / 25.56", SB, HEALTH.format(2)),
    Quote(B, "25.56 | 3.23", SB, "flatness.health_and_alerts.ratio_largest_to_smallest"),
    Quote(B, "| after: 6.48", SA, HEALTH.format(0)),
    Quote(B, "| after: 6.48 / 7.58", SA, HEALTH.format(1)),
    Quote(B, "| after: 6.48 / 7.58 / 9.06", SA, HEALTH.format(2)),
    Quote(B, "9.06 | 1.4", SA, "flatness.health_and_alerts.ratio_largest_to_smallest"),
    # guarantees.md, retention
    Quote("guarantees.md", "one run deleted 246241", S, "prune.deleted"),
    Quote("guarantees.md", "expired jobs and 756226", S, "prune.events_deleted"),
    Quote("guarantees.md", "events in 8.3", S, "prune.seconds"),
    Quote("guarantees.md", "8.3 s, 29666.8", S, "prune.jobs_per_s"),
    Quote("guarantees.md", "29666.8 jobs/s, 66.3", S, "prune.ratio_to_e2e"),
    Quote("guarantees.md", "compared with (447.3", S, "prune.e2e_jobs_per_s"),
]

ALLOWED: list[Allowed] = [
    Allowed("console.md", '("3 dead jobs match", or "More than 10,000")', "what the page prints, as an example"),
    Allowed("console.md", "`MEDIC_MAX_BULK_CANCEL` jobs (default 1,000)", "a setting's default"),
    Allowed("console.md", "(cut at 2,000 characters", "a constant in the code"),
    Allowed("console.md", "answers under 200 ms at p95", "issue 23's target, not a measurement"),
    Allowed("README.md", "Python ≥ 3.11", "a version"),
    Allowed("deploy.md", "Kubernetes ≥ 1.30", "a version"),
    Allowed("deploy.md", "K8s 1.37 schemas", "a version"),
    Allowed("testing.md", "pytest-celery 1.3", "a version"),
    Allowed("api.md", "a bounded cache (10,000 keys", "a limit in the code"),
    Allowed("api.md", "`MEDIC_WS_POLL_SECONDS`, 0.15 s", "a setting's default"),
    Allowed("api.md", "`MEDIC_WS_CLIENT_QUEUE` (1,000)", "a setting's default"),
    Allowed("architecture.md", "2 s / 0.5 s", "a loop's period and lock"),
    Allowed("architecture.md", "1 s / 0.5 s", "a loop's period (fire_schedules)"),
    Allowed("load.md", "(2 s; 0.5 s in the `fast`", "a setting's default"),
    Allowed("load.md", "more than 1,000 rows read", "the plan test's bound"),
    Allowed("load.md", "in chunks of 1,000", "a chunk size in the code"),
    Allowed("operations.md", "back-off (0.5 s", "a constant in the code"),
    Allowed("operations.md", "`MEDIC_ALERT_USAGE_RATIO` (0.8)", "a setting's default"),
    Allowed("operations.md", "samples itself every 0.1 s", "a constant in the code"),
    Allowed("operations.md", "locks `jobs` 2.8 s of every 3 s", "the test's condition"),
    Allowed("guarantees.md", "batch after batch (2,000 jobs", "a constant in the code"),
    Allowed("guarantees.md", "20 batches of 1,000", "the old code's constants"),
    Allowed("guarantees.md", "4 + 0.5 + 1 s by default", "settings' defaults"),
    Allowed(
        "guarantees.md",
        "lease 10 s, heartbeat 2 s, presence TTL 6 s and a 5 s scan:\n13.27 s",
        "the old defaults and the old run's figure",
    ),
    Allowed("guarantees.md", "lease - heartbeat = 3 s per extension", "settings' defaults"),
    Allowed("guarantees.md", "`MEDIC_LEASE_MARGIN_SECONDS` (0.5 s)", "a setting's default"),
    Allowed("configuration.md", "| >= 0.1 |", "a setting's lower bound"),
    Allowed("configuration.md", '{"tenant": 2.0}', "an example weight in a setting's description"),
    Allowed("nemesis.md", "(heartbeat 1 s, presence 2.5 s, margin\n  0.5 s,", "settings' defaults"),
    Allowed(B, "polled every 0.1 s", "the bench's polling period"),
    Allowed(B, "cores busy over 0.5 s", "the bench's load check"),
    Allowed(B, "an in-process loop of 2,000 jobs", "the loop's size"),
    Allowed(B, "5,000 messages through", "the loop's size"),
    Allowed(B, "95.5 % succeeded, 2 % dead, 1 % cancelled (3, 7 and 2 events each), 1 % queued, 0.5 %", "fill mix"),
]

R, ST = "recovery.json", "stream.json"
QUOTES += [
    Quote("guarantees.md", "(`code.head` c4e0053", R, "code.head"),
    Quote("guarantees.md", "1-min load 0.15", R, "machine.load_avg_at_start.0"),
    Quote("guarantees.md", "(lease 4.0", R, "medic.settings.lease_s"),
    Quote("guarantees.md", "heartbeat 1.0", R, "medic.settings.heartbeat_s"),
    Quote("guarantees.md", "presence TTL 2.5", R, "medic.settings.presence_ttl_s"),
    Quote("guarantees.md", "`recover_stuck` every 1.0", R, "medic.settings.recover_period_s"),
    Quote("guarantees.md", "margin 0.5", R, "medic.settings.lease_margin_s"),
    Quote("guarantees.md", "| median 4.35", R, "medic.kill_to_rerun_start_s.median"),
    Quote("guarantees.md", "(min 4.32", R, "medic.kill_to_rerun_start_s.min"),
    Quote("guarantees.md", "max 4.36", R, "medic.kill_to_rerun_start_s.max"),
    Quote("guarantees.md", "| median 12.4", R, "medic.kill_to_succeeded_s.median"),
    Quote("guarantees.md", "(min 12.36", R, "medic.kill_to_succeeded_s.min"),
    Quote("guarantees.md", "max 12.41", R, "medic.kill_to_succeeded_s.max"),
    Quote("guarantees.md", "12.41; 8.0", R, "job_seconds"),
    Quote("api.md", "docs/bench/stream.json, `code.head` b314ccc", ST, "code.head"),
    Quote("api.md", "1-min load 9.67", ST, "machine.load_avg_at_start.0"),
    Quote("api.md", "1-min load 9.67 at the start and at the end): 1,000", ST, "clients"),
    Quote("api.md", "at the end): 1,000 clients following 100", ST, "jobs_followed"),
    Quote("api.md", "following 100 jobs, 37,500", ST, "deliveries_received"),
    Quote("api.md", "37,500 deliveries of 50,000", ST, "deliveries_expected"),
    Quote("api.md", "client p50 9060.3", ST, "latency_ms.p50"),
    Quote("api.md", "p99 14232.6", ST, "latency_ms.p99"),
    Quote("api.md", "API RSS 106.3", ST, "api_rss_mb.idle"),
    Quote("api.md", "idle -> 186.4", ST, "api_rss_mb.clients_connected"),
    Quote("api.md", "186.4 MB with 1,000", ST, "clients"),
    Quote("api.md", "-> 194.6", ST, "api_rss_mb.peak_during_load"),
    Quote("api.md", "polling: 81.14", ST, "polling_get_job.get_job_ms_per_request"),
    Quote("api.md", "the ledger read is 4.071", ST, "polling_get_job.ledger_read_ms"),
    Quote("api.md", "a Redis GET would be 0.468", ST, "polling_get_job.redis_get_ms"),
    Quote("api.md", "`cache_could_save_share` 0.044", ST, "polling_get_job.cache_could_save_share"),
]
ALLOWED += [Allowed("api.md", "the bench's 10 s wait", "the bench's own wait")]

NJ, NM = "nemesis.json", "nemesis.md"
QUOTES += [
    Quote(NM, "(`code.head` eddf7c8", NJ, "code.head"),
    Quote(NM, "eddf7c8, seed 273749254", NJ, "seed"),
    Quote(NM, "1-min load 0.1 before", NJ, "load_before.loadavg_1m"),
    Quote(NM, "NEMESIS_SEED=273749254 make", NJ, "seed"),
    Quote(NM, "| all | 9", NJ, "recovery_s.overall.count"),
    Quote(NM, "| all | 9 | 5.22", NJ, "recovery_s.overall.p50"),
    Quote(NM, "| 5.22 s | 7.98", NJ, "recovery_s.overall.max"),
    Quote(NM, "worker host) | 2", NJ, "recovery_s.by_fault.kill_host.count"),
    Quote(NM, "worker host) | 2 | 5.21", NJ, "recovery_s.by_fault.kill_host.p50"),
    Quote(NM, "| 5.21 s | 5.22", NJ, "recovery_s.by_fault.kill_host.max"),
    Quote(NM, "data host) | 2", NJ, "recovery_s.by_fault.partition.count"),
    Quote(NM, "data host) | 2 | 5.09", NJ, "recovery_s.by_fault.partition.p50"),
    Quote(NM, "| 5.09 s | 5.49", NJ, "recovery_s.by_fault.partition.max"),
    Quote(NM, "the lease) | 2", NJ, "recovery_s.by_fault.pause_child.count"),
    Quote(NM, "the lease) | 2 | 4.02", NJ, "recovery_s.by_fault.pause_child.p50"),
    Quote(NM, "| 4.02 s | 4.09", NJ, "recovery_s.by_fault.pause_child.max"),
    Quote(NM, "whole worker host) | 3", NJ, "recovery_s.by_fault.pause_host.count"),
    Quote(NM, "whole worker host) | 3 | 7.88", NJ, "recovery_s.by_fault.pause_host.p50"),
    Quote(NM, "| 7.88 s | 7.98", NJ, "recovery_s.by_fault.pause_host.max"),
    Quote(NM, "paused at 589.6", NJ, "faults.16.start_s"),
    Quote(NM, "(from 587.89", NJ, "faults.15.start_s"),
]
ALLOWED += [Allowed(NM, "above 6 s are", "the issue's target"), Allowed(NM, "over 600 s of", "the schedule's length")]

OV, L = "overload.json", "load.md"
QUOTES += [
    Quote(L, "[bench/overload.json](bench/overload.json) (`code.head` b314ccc", OV, "code.head"),
    Quote(L, "1-min load 8.21", OV, "machine.load_avg_at_start.0"),
    Quote(L, "| requests in 30.0", OV, "seconds"),
    Quote(L, "| requests in 30.0 s | 5418", OV, "requests"),
    Quote(L, "| accepted / rejected per second | 5.9", OV, "accepted_per_s"),
    Quote(L, "| accepted / rejected per second | 5.9 / 174.7", OV, "rejected_per_s"),
    Quote(L, "| latency of 202 (p50 / p99) | 55.5", OV, "latency_ms.202.p50"),
    Quote(L, "55.5 ms / 484.4", OV, "latency_ms.202.p99"),
    Quote(L, "| latency of 429 (p50 / p99) | 32.8", OV, "latency_ms.429.p50"),
    Quote(L, "32.8 ms / 139.1", OV, "latency_ms.429.p99"),
    Quote(L, "| depth: peak / median | 100", OV, "depth.peak"),
    Quote(L, "| depth: peak / median | 100 / 64.0", OV, "depth.median"),
    Quote(L, "| watermarks: high / low / hard limit | 100", OV, "watermarks.high"),
    Quote(L, "| watermarks: high / low / hard limit | 100 / 50", OV, "watermarks.low"),
    Quote(L, "| watermarks: high / low / hard limit | 100 / 50 / 120", OV, "watermarks.hard_limit"),
    Quote(L, "`peak_over_high`: 0", OV, "peak_over_high"),
    Quote(L, "| admission transitions | 3", OV, "admission_transitions"),
    Quote(L, "| 176", OV, "accepted_jobs.accepted_202"),
    Quote(L, "`succeeded` 176", OV, "accepted_jobs.states.succeeded"),
    Quote(L, "176, 45.2", OV, "accepted_jobs.terminal_after_s"),
    Quote(L, "(bound 130.4", OV, "accepted_jobs.wait_bound_s"),
    Quote(L, "enqueued 176", OV, "events_by_reason.enqueued"),
    Quote(L, "claimed 176", OV, "events_by_reason.claimed"),
    Quote(L, "succeeded 176 |", OV, "events_by_reason.succeeded"),
    Quote(L, "every one of the 176", OV, "accepted_jobs.accepted_202"),
]
ALLOWED += [Allowed(L, "one slot at 5 jobs/s", "the bench's capacity: one slot, jobs of 0.2 s")]

LMB, LM = "list_memory_before.json", "list_memory.json"
QUOTES += [
    Quote("api.md", "peak RSS growing by 431.6", LMB, "runs.0.peak_growth_mb"),
    Quote("api.md", "(500", LMB, "jobs"),
    Quote("api.md", "without them, and 38.5", LM, "runs.1.peak_growth_mb"),
    Quote("api.md", "list_memory_before.json)), 2.3", LM, "runs.0.peak_growth_mb"),
]
ALLOWED += [
    Allowed("api.md", "with 64 KB object args, ~7,600 keys each", "the bench's job shape"),
    Allowed("load.md", "`MEDIC_TENANT_QUEUE_SHARE` (0.2)", "a setting's default"),
    Allowed("load.md", "(2,000 of the default 10,000", "a setting's default, worked out"),
]
ALLOWED += [
    Allowed("api.md", "in windows of 20,000 ids", "a window size in the code"),
    Allowed("api.md", "a 1,000,000-id gap", "an example of a gap's width"),
    Allowed("api.md", "at most 20,000 later events", "a cap in the code"),
    Allowed("api.md", "the 100,000 ids below", "a window in the code"),
]

FL = "flow.json"
FF, FO, FA = "fairness", "overhead", "accuracy"
QUOTES += [
    Quote(L, "[bench/flow.json](bench/flow.json) (`code.head` c4cd9ce", FL, "code.head"),
    Quote(L, "1-min load\n0.79", FL, f"{FF}.load_before_each_round.*.loadavg_1m|min"),
    Quote(L, "0.79 to 2.82", FL, f"{FF}.load_before_each_round.*.loadavg_1m|max"),
    Quote(L, "fairness rounds, 3.1", FL, f"{FO}.{ROUNDS}|min"),
    Quote(L, "3.1 to 4.12", FL, f"{FO}.{ROUNDS}|max"),
    Quote(L, "`bench-fifo` | 43.6", FL, f"{FF}.idle_fifo.b_wait_p50_ms.median"),
    Quote(L, "43.6 ms / 65.1", FL, f"{FF}.idle_fifo.b_wait_p95_ms.median"),
    Quote(L, "`bench-fair` | 61.3", FL, f"{FF}.idle_fair.b_wait_p50_ms.median"),
    Quote(L, "61.3 ms / 88.8", FL, f"{FF}.idle_fair.b_wait_p95_ms.median"),
    Quote(L, "FIFO (`bench-fifo`) | 4105.3", FL, f"{FF}.fifo.b_wait_p50_ms.median"),
    Quote(L, "4105.3 ms / 4123.8", FL, f"{FF}.fifo.b_wait_p95_ms.median"),
    Quote(L, "4123.8 ms | 435.4", FL, f"{FF}.fifo.a_jobs_per_s.median"),
    Quote(L, "(`bench-fair`) | 151.5", FL, f"{FF}.fair.b_wait_p50_ms.median"),
    Quote(L, "151.5 ms / 196.2", FL, f"{FF}.fair.b_wait_p95_ms.median"),
    Quote(L, "196.2 ms | 249.7", FL, f"{FF}.fair.a_jobs_per_s.median"),
    Quote(L, "b's p95 behind a\nis 2.21", FL, f"{FF}.fair_b_p95_over_idle_fair"),
    Quote(L, "backlog (63.35", FL, f"{FF}.fifo_b_p95_over_idle_fifo"),
    Quote(L, "the ratio is 3.01", FL, f"{FF}.fair_b_p95_over_idle_fifo"),
    Quote(L, "a's rate: 0.573", FL, f"{FF}.a_rate_fair_over_fifo"),
    Quote(L, "fast path | 464.9", FL, f"{FO}.a_fast_path.jobs_per_s.median"),
    Quote(L, "its own key) | 335.6", FL, f"{FO}.b_keyed_limit_100.jobs_per_s.median"),
    Quote(L, "| 335.6 | 0.722", FL, f"{FO}.ratio_to_a_median.b_keyed_limit_100"),
    Quote(L, "`100000/s` | 143.2", FL, f"{FO}.c_rate_100000_per_s.jobs_per_s.median"),
    Quote(L, "| 143.2 | 0.308", FL, f"{FO}.ratio_to_a_median.c_rate_100000_per_s"),
    Quote(L, "dispatched queue | 274.2", FL, f"{FO}.d_dispatched_queue.jobs_per_s.median"),
    Quote(L, "| 274.2 | 0.59", FL, f"{FO}.ratio_to_a_median.d_dispatched_queue"),
    Quote(L, "never more than 51", FL, f"{FA}.rate_50_per_s.max_starts_in_any_1s_window"),
    Quote(L, "one), 47.69", FL, f"{FA}.rate_50_per_s.mean_starts_per_s"),
    Quote(L, "the 3,000 took 62.9", FL, f"{FA}.rate_50_per_s.first_to_last_start_s"),
    Quote(L, "at most 3", FL, f"{FA}.keyed_limit_3.peak_concurrent_per_key.k1"),
    Quote(L, "(key limit 3, 0.1", FL, "settings.args.keyed_sleep"),
    Quote(L, "4 across", FL, f"{FA}.keyed_limit_3.peak_concurrent_all_keys"),
]
ALLOWED += [
    Allowed(L, "Tenant `a` submits 2,000 jobs", "the bench's parameter (--a-jobs)"),
    Allowed(L, "1,000 no-op jobs submitted", "the bench's parameter (--e2e-jobs)"),
    Allowed(L, '`flowbench.rate50` (`rate_limit="50/s"`), 3,000 jobs', "the bench's parameter (50/s x 60 s)"),
]

D, PGC = "deploy.md", "pg_connections.json"
QUOTES += [
    Quote(D, "[bench/pg_connections.json](bench/pg_connections.json), `code.head` 1a6b64c", PGC, "code.head"),
    Quote(D, "the connection budget counts 92", PGC, "sides.direct.budget_counted"),
    Quote(D, "straight to PostgreSQL | 5", PGC, "sides.direct.idle.servers.peak"),
    Quote(D, "straight to PostgreSQL | 5 | peak 36", PGC, "sides.direct.loaded.servers.peak"),
    Quote(D, "(`default_pool_size` 10) | 2", PGC, "sides.pgbouncer.idle.servers.peak"),
    Quote(D, "(`default_pool_size` 10) | 2 | peak 10", PGC, "sides.pgbouncer.loaded.servers.peak"),
    Quote(D, "medic's client connections: peak 35", PGC, "sides.pgbouncer.loaded.medic_clients.peak"),
    Quote(D, "(1-min load 11.5", PGC, "sides.direct.load_before.loadavg_1m"),
]
ALLOWED += [
    Allowed(D, "sampled every 50 ms", "the bench's sampling interval (bench/pg_connections.py Sampler)"),
    Allowed(D, "| 1,000 jobs over HTTP |", "the bench's parameter (--jobs)"),
    Allowed(D, "(`default_pool_size` 10)", "the bench's parameter (--pool-size)"),
]

# benchmarks.md and brokers.md: bench/brokers.py, Redis and RabbitMQ in one run
QUOTES += [
    Quote("benchmarks.md", "`code.head` 27b229b, started", "brokers.json", "code.head"),
    Quote("benchmarks.md", "started 2026-12-06T02:03:34+00:00", "brokers.json", "timestamp"),
    Quote("benchmarks.md", "`elapsed_s` 197.4", "brokers.json", "elapsed_s"),
    Quote("benchmarks.md", "1-min load 0.40", "brokers.json", "end_to_end.load_before_each_round.*.loadavg_1m|min"),
    Quote(
        "benchmarks.md", "1-min load 0.40 to 1.38", "brokers.json", "end_to_end.load_before_each_round.*.loadavg_1m|max"
    ),
    Quote(
        "benchmarks.md", "end-to-end rounds, 1.49", "brokers.json", "recovery.load_before_each_round.*.loadavg_1m|min"
    ),
    Quote(
        "benchmarks.md",
        "end-to-end rounds, 1.49 to\n1.49",
        "brokers.json",
        "recovery.load_before_each_round.*.loadavg_1m|max",
    ),
    Quote("benchmarks.md", "| on Redis | 291.2", "brokers.json", "end_to_end.redis.medic.median"),
    Quote("benchmarks.md", "| on Redis | 291.2 | 785.4", "brokers.json", "end_to_end.redis.plain.median"),
    Quote(
        "benchmarks.md",
        "| on Redis | 291.2 | 785.4 | 0.371",
        "brokers.json",
        "end_to_end.redis.ratio_medic_vs_plain.median",
    ),
    Quote("benchmarks.md", "| on Redis | 13.01", "brokers.json", "recovery.redis.medic_kill_to_succeeded_median_s"),
    Quote("benchmarks.md", "| on Redis | 13.01 s | 0", "brokers.json", "recovery.redis.plain_celery.*.recovered|max"),
    Quote("benchmarks.md", "| on RabbitMQ | 284.7", "brokers.json", "end_to_end.rabbitmq.medic.median"),
    Quote("benchmarks.md", "| on RabbitMQ | 284.7 | 580.1", "brokers.json", "end_to_end.rabbitmq.plain.median"),
    Quote(
        "benchmarks.md",
        "| on RabbitMQ | 284.7 | 580.1 | 0.491",
        "brokers.json",
        "end_to_end.rabbitmq.ratio_medic_vs_plain.median",
    ),
    Quote(
        "benchmarks.md", "| on RabbitMQ | 12.44", "brokers.json", "recovery.rabbitmq.medic_kill_to_succeeded_median_s"
    ),
    Quote(
        "benchmarks.md",
        "| on RabbitMQ | 12.44 s | 8.02",
        "brokers.json",
        "recovery.rabbitmq.plain_celery_kill_to_succeeded_median_s",
    ),
    Quote(
        "benchmarks.md", "medic on RabbitMQ ran at 0.978", "brokers.json", "end_to_end.rabbitmq_vs_redis_medic_median"
    ),
    Quote("benchmarks.md", "Celery at 0.739", "brokers.json", "end_to_end.rabbitmq_vs_redis_plain_median"),
    Quote("benchmarks.md", "median 4.95", "brokers.json", "recovery.redis.medic.0.kill_to_rerun_start_s.median"),
    Quote("benchmarks.md", "on Redis, 4.42", "brokers.json", "recovery.rabbitmq.medic.0.kill_to_rerun_start_s.median"),
    Quote("brokers.md", "(`code.head` 27b229b)", "brokers.json", "code.head"),
    Quote("brokers.md", "end to end medic ran\n284.7", "brokers.json", "end_to_end.rabbitmq.medic.median"),
    Quote("brokers.md", "jobs/s on RabbitMQ and 291.2", "brokers.json", "end_to_end.redis.medic.median"),
    Quote("brokers.md", "same broker, 0.491", "brokers.json", "end_to_end.rabbitmq.ratio_medic_vs_plain.median"),
    Quote("brokers.md", "on RabbitMQ and 0.371", "brokers.json", "end_to_end.redis.ratio_medic_vs_plain.median"),
    Quote("brokers.md", "succeeded: medic 12.44", "brokers.json", "recovery.rabbitmq.medic_kill_to_succeeded_median_s"),
    Quote("brokers.md", "s on RabbitMQ, 13.01", "brokers.json", "recovery.redis.medic_kill_to_succeeded_median_s"),
    Quote(
        "brokers.md", "plain Celery 8.02", "brokers.json", "recovery.rabbitmq.plain_celery_kill_to_succeeded_median_s"
    ),
    Quote("brokers.md", "messages), 0", "brokers.json", "recovery.redis.plain_celery.*.recovered|max"),
]

# benchmarks.md, Console: bench/console.py, the jobs page at a million jobs (issue 23)
CJ = "console.json"
CONSOLE_ROWS = {  # the table's first two cells, up to its p50 and p95
    "newest": "| newest (read) | `/console/jobs` |",
    "state_dead": "| state_dead (read) | `?state=dead` |",
    "state_queued": "| state_queued (read) | `?state=queued` |",
    "type": "| type (read) | `?type=examples.fail` |",
    "queue": "| queue (read) | `?queue=bench-scale-1` |",
    "created_1h": "| created_1h (read) | `?created_after=..&created_before=..`, 1 hour 20 days back |",
    "page_2": '| page_2 (read) | `?cursor=..` of the "Older jobs" link |',
    "args_contains_1d": "| args_contains_1d (read) | "
    "`?args_contains=cust-42&created_after=..&created_before=..`, 1 day |",
    "admin_other_tenant": "| admin_other_tenant (admin) | `?tenant=tenant-3` |",
    "job_page": "| job_page (read) | `/console/jobs/{id}` of a dead job |",
    "confirm_retry_dead": "| confirm_retry_dead (admin) | `/console/jobs/confirm?action=retry&state=dead` |",
    "api_jobs_limit_50": "| api_jobs_limit_50 (Bearer) | `GET /jobs?limit=50`, the JSON API |",
}
CONSOLE_FIGURES = {  # p50, p95 as the table prints them
    "newest": ("17.9", "69.5"),
    "state_dead": ("13.0", "57.0"),
    "state_queued": ("13.7", "52.0"),
    "type": ("10.1", "25.9"),
    "queue": ("10.3", "22.5"),
    "created_1h": ("11.5", "28.6"),
    "page_2": ("9.9", "23.0"),
    "args_contains_1d": ("39.6", "66.3"),
    "admin_other_tenant": ("10.5", "27.8"),
    "job_page": ("10.1", "24.3"),
    "confirm_retry_dead": ("11.3", "24.7"),
    "api_jobs_limit_50": ("5.9", "17.2"),
}
QUOTES += [
    Quote(B, "[bench/console.json](bench/console.json), `code.head` 0d01f4c", CJ, "code.head"),
    Quote(B, "started 2026-12-06T03:33:30+00:00", CJ, "timestamp"),
    Quote(B, "took `elapsed_s` 350.6", CJ, "elapsed_s"),
    Quote(B, "with 1,000,000", CJ, "ledger.jobs"),
    Quote(B, "(20,000 of them dead", CJ, "ledger.jobs_dead"),
    Quote(B, "dead) and 3,045,000", CJ, "ledger.events"),
    Quote(B, "1-min load 5.28", CJ, "load_before_each_round.*.loadavg_1m|min"),
    Quote(B, "1-min load 5.28 to 5.7", CJ, "load_before_each_round.*.loadavg_1m|max"),
    Quote(B, "busy cores 1.98", CJ, "load_before_each_round.*.busy_cores|min"),
    Quote(B, "busy cores 1.98 to 2.01", CJ, "load_before_each_round.*.busy_cores|max"),
    Quote(B, "`verdict.worst_p95_ms`, 69.5", CJ, "verdict.worst_p95_ms"),
    Quote(B, "(9 rows on the page", CJ, "variants.args_contains_1d.answer.rows"),
    Quote(B, "removed the rest of the day, 16.785", CJ, "plans.args_contains_1d.0.execution_ms"),
    Quote(B, "capped at 10,001", CJ, "settings.confirm_count_up_to"),
    Quote(B, '(it says "More than 10,000 dead jobs match"', CJ, "variants.confirm_retry_dead.answer.says"),
    Quote(B, "2.637", CJ, "plans.confirm_retry_dead.0.execution_ms"),
]
for _name, (_p50, _p95) in CONSOLE_FIGURES.items():
    QUOTES += [
        Quote(B, f"{CONSOLE_ROWS[_name]} {_p50}", CJ, f"variants.{_name}.p50_ms"),
        Quote(B, f"{CONSOLE_ROWS[_name]} {_p50} | {_p95}", CJ, f"variants.{_name}.p95_ms"),
    ]
