"""Deep-queue replay: FCFS, FCFS+EASY and FCFS+conservative on a RICC-shaped trace.

Targets (the issue's): FCFS+EASY >= 40,000 jobs/s and FCFS+conservative >= 10,000 jobs/s on
one core, both within 2 GB.

The trace is generated (:mod:`cplat.traces.deep_queue`: 447,794 jobs, 1,024 nodes x 8 cores,
offered load 0.95, inaccurate estimates, thousands waiting), so no download is needed. Each
replay runs in a fresh subprocess: its peak memory is its own. ``--quick`` replays the first
60,000 jobs.

    python bench/bench_deep_queue.py [--quick] [--policies fcfs,easy,conservative]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench_engine import machine

from cplat.scheduler import SLURM_BACKFILL

BENCH_DIR = str(Path(__file__).resolve().parent)
QUICK_JOBS = 60_000
RICC_JOBS = 447_794
#: The replays: name -> (backfill, QueuePolicy options). EASY is exact; "conservative" plans
#: with Slurm's default bounds (cplat.scheduler.SLURM_BACKFILL); "conservative-exact" plans
#: every pending job on the exact calendar (slow on deep queues: not in the default set).
POLICIES: dict[str, tuple[str, dict[str, int]]] = {
    "fcfs": ("none", {}),
    "easy": ("easy", {}),
    "conservative": ("conservative", SLURM_BACKFILL),
    "conservative-exact": ("conservative", {}),
}
#: Jobs per second the issue asks for (FCFS alone has no target of its own).
TARGETS = {"easy": 40_000.0, "conservative": 10_000.0, "conservative-exact": 10_000.0}
RSS_TARGET_MB = 2048.0

REPLAY = """
import json, resource, sys, time
from cplat.scheduler import QueuePolicy, nodes_from_table
from cplat.sim.run import simulate
from cplat.traces.deep_queue import deep_queue_nodes, deep_queue_trace
jobs = deep_queue_trace({jobs})
nodes = nodes_from_table(deep_queue_nodes())
policy = QueuePolicy("fcfs", {backfill!r}, **{options!r})
t0 = time.perf_counter()
cpu0 = time.process_time()
res = simulate(jobs, nodes, queue=policy)
cpu = time.process_time() - cpu0
dt = time.perf_counter() - t0
wait = res.start - res.columns.submit
out = {{"seconds": dt, "cpu_seconds": cpu, "jobs": jobs.num_rows,
       "done": int((res.end >= 0).sum()), "cycles": res.cycles,
       "mean_wait": float(wait.mean()),
       "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}
if {baseline}:
    sys.path.insert(0, {bench_dir!r})
    from reference import reference_fcfs, timed
    cols = [jobs.column(c).to_pylist() for c in ("submit_time", "duration", "num_tasks")]
    out["baseline"] = sorted(timed(lambda: reference_fcfs(*cols, 8192)) for _ in range(3))[1]
print(json.dumps(out))
"""


def deep_queue_replay(jobs: int, policy: str, baseline: bool = False) -> dict[str, float]:
    """Replay ``jobs`` deep-queue jobs with FCFS and ``policy`` (a :data:`POLICIES` name).

    Runs in a fresh process; with ``baseline`` the pure-Python FCFS reference loop is timed
    on the same jobs afterwards (``baseline`` seconds in the result).
    """
    backfill, options = POLICIES[policy]
    code = REPLAY.format(
        jobs=jobs, backfill=backfill, options=options, baseline=baseline, bench_dir=BENCH_DIR
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description="cplat deep-queue replay benchmark")
    ap.add_argument("--quick", action="store_true", help=f"the first {QUICK_JOBS:,} jobs (CI)")
    ap.add_argument("--jobs", type=int, default=None, help="replay the first JOBS jobs")
    ap.add_argument(
        "--policies",
        default="fcfs,easy,conservative",
        help=f"comma-separated, of {', '.join(POLICIES)}",
    )
    args = ap.parse_args()
    n = args.jobs or (QUICK_JOBS if args.quick else RICC_JOBS)
    print(f"machine: {machine()}")
    print(f"deep-queue trace (RICC-shaped), first {n:,} jobs, 1,024 nodes x 8 cores")
    for policy in args.policies.split(","):
        r = deep_queue_replay(n, policy)
        rate = r["jobs"] / r["cpu_seconds"]
        target = TARGETS.get(policy)
        versus = f"  {rate / target:5.2f}x of target {target:,.0f}" if target else ""
        print(
            f"{policy:<18} {rate:>10,.0f} jobs/CPU-s ({r['cpu_seconds']:.1f} CPU-s, "
            f"{r['jobs'] / r['seconds']:,.0f} jobs/s wall), {r['rss_mb']:,.0f} MB "
            f"(<= {RSS_TARGET_MB:,.0f}), mean wait {r['mean_wait']:,.0f} s{versus}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
