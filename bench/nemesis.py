"""Nemesis: medic on seven network-namespace hosts under steady load while a seeded schedule of
faults runs (partitions from the data host, latency + jitter, SIGSTOP of a child and of a whole
worker host past the lease, SIGKILL of a worker host, Redis and PostgreSQL restarts, rolling
restarts), then the checker over histories recorded outside the ledger. Needs root.

Writes docs/bench/nemesis.json (the seed, the code and machine, every fault with its times, jobs
submitted/accepted/succeeded/lost, duplicate finishes, overlaps, API answers, kill-to-rerun
p50/p95/max per fault kind and overall) and docs/img/nemesis.png (faults as bands, throughput
and recoveries over time; needs matplotlib, the `bench` extra). See docs/nemesis.md.

    .venv/bin/python -m bench.nemesis                  # 10 minutes, a fresh seed (`make nemesis`)
    .venv/bin/python -m bench.nemesis --minutes 3 --seed 7
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from bench.common import ROOT, header, load_check, options
from tests.nemesis.run import Options, run, seed_from_env

COLORS = {
    "partition": "tab:red", "latency": "tab:olive", "pause_child": "tab:purple", "pause_host": "tab:pink",
    "kill_host": "black", "restart_redis": "tab:orange", "restart_pg": "tab:blue", "rolling_restart": "tab:green",
}  # fmt: skip


def fault_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each fault with its times as seconds since the load started (and as wall time)."""
    t0 = result["times"]["load_start"]
    rows = []
    for f in result["faults"]:
        row = {
            "kind": f["kind"], "host": f["host"], "params": f["params"],
            "start_s": round(f["start"] - t0, 2), "end_s": round(f["end"] - t0, 2),
            "start_wall": f["start"], "end_wall": f["end"], "pids": f["pids"],
            "pauses": [{"pid": p["pid"], "stop_s": round(p["stop"] - t0, 2), "cont_s": round(p["cont"] - t0, 2)}
                       for p in f["pauses"]],
        }  # fmt: skip
        for extra in ("jobs_running", "resumed_on_rerun", "restarted_at", "ready_at", "steps", "error"):
            if extra in f:
                row[extra] = f[extra]
        rows.append(row)
    return rows


def report(result: dict[str, Any], load: dict[str, float]) -> dict[str, Any]:
    rec = result["recovery_s"]
    minutes = result["options"]["length_s"] / 60
    return {
        **header("nemesis"),
        "load_before": load,
        "seed": result["seed"],
        "replay": f"{result['replay']} .venv/bin/python -m bench.nemesis --minutes {minutes:g}",
        "settings": result["settings"],
        "options": result["options"],
        "times": {k: v for k, v in result["times"].items() if k.endswith("_s") or k == "unfinished_after_drain"},
        "fault_kinds_run": result["fault_kinds_run"],
        "faults": fault_rows(result),
        "fault_errors": result["fault_errors"],
        "jobs": result["jobs"],
        "executions": result["executions"],
        "duplicates": result["duplicate_finishes"],
        "duplicate_finish_ids": result["duplicate_finish_ids"],
        "history_finished_twice": result["history_finished_twice"],
        "overlaps": result["overlaps"],
        "overlap_pairs": result["overlap_pairs"],
        "api": result["api"],
        "recovery_s": {
            "overall": rec["overall"],
            "by_fault": rec["by_fault"],
            "cut_not_rerun": rec["cut_not_rerun"],
            "points": [{**p, "at_s": round(p["at"] - result["times"]["load_start"], 2)} for p in rec["points"]],
        },
        "consuming_after_last_fault": result["consuming_after_last_fault"],
        "workers_alive_at_end": result["workers_alive_at_end"],
        "unexpected_exits": result["unexpected_exits"],
        "throughput": result["throughput"],
        "run_dir": result["run_dir"],
    }


def plot(rep: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(13, 6.5), sharex=True, height_ratios=[3, 2])
    seen: set[str] = set()
    for f in rep["faults"]:
        label = f["kind"] if f["kind"] not in seen else None
        seen.add(f["kind"])
        for ax in (top, bottom):
            ax.axvspan(
                f["start_s"],
                f["end_s"],
                color=COLORS.get(f["kind"], "grey"),
                alpha=0.18,
                label=label if ax is top else None,
            )
        top.text(f["start_s"], 0.98, f["host"], transform=top.get_xaxis_transform(), fontsize=7, va="top")
    tp = rep["throughput"]
    xs = [i * tp["bucket_s"] for i in range(len(tp["succeeded"]))]
    top.step(xs, tp["succeeded"], where="post", color="tab:blue", lw=1.2, label=f"succeeded per {tp['bucket_s']:g} s")
    top.set_ylabel(f"jobs succeeded / {tp['bucket_s']:g} s")
    overlaps = rep["overlaps"]
    title = (f"nemesis seed {rep['seed']} at {rep['code']['head']}: {rep['jobs']['accepted']} accepted, "
             f"{rep['jobs']['lost']} lost, {rep['duplicates']} duplicate finishes, {overlaps} overlaps, "
             f"{len(rep['unexpected_exits'])} processes died by themselves")  # fmt: skip
    top.set_title(title, fontsize=10)
    top.legend(loc="upper right", fontsize=7, ncol=3)
    for kind in sorted({p["kind"] for p in rep["recovery_s"]["points"]}):
        pts = [p for p in rep["recovery_s"]["points"] if p["kind"] == kind]
        bottom.scatter(
            [p["at_s"] for p in pts], [p["seconds"] for p in pts], s=18, color=COLORS.get(kind, "grey"), label=kind
        )
    bottom.axhline(6, color="grey", ls="--", lw=0.8)
    bottom.text(0, 6, " 6 s", fontsize=7, va="bottom", color="grey")
    bottom.set_ylabel("kill-to-rerun (s)")
    bottom.set_xlabel("seconds since the load started")
    if rep["recovery_s"]["points"]:
        bottom.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    args = options(
        __doc__, minutes=10.0, seed=-1, rate=3.0, out=str(ROOT / "docs" / "bench" / "nemesis.json"),
        plot=str(ROOT / "docs" / "img" / "nemesis.png"),
    )  # fmt: skip
    seed = args.seed if args.seed >= 0 else seed_from_env()
    load = load_check()
    run_dir = Path(tempfile.mkdtemp(prefix=f"medic-nemesis-{seed}-"))
    opts = Options(seed=seed, length_s=args.minutes * 60, rate=args.rate, fill=True, tail_s=15.0, drain_s=150.0)
    rep = report(run(opts, run_dir), load)
    Path(args.out).write_text(json.dumps(rep, indent=1, default=str) + "\n")
    plot(rep, Path(args.plot))
    summary = {k: rep[k] for k in ("seed", "jobs", "duplicates", "overlaps")}
    print(json.dumps({**summary, "recovery_s": rep["recovery_s"]["overall"], "out": args.out, "plot": args.plot}))


if __name__ == "__main__":
    main()
