"""Simulator benchmarks: replay throughput and memory, and the openb time-driven replay.

Each measurement runs in a fresh subprocess so its peak memory is its own.

    python bench/bench_sim.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench_engine import DEFAULT_TRACES, machine

SYNTHETIC = """
import json, resource, time
from cplat.scheduler import QueuePolicy, nodes_from_table
from cplat.sim.run import simulate
from cplat.workload import lublin_feitelson, synthetic_cluster_nodes
jobs = lublin_feitelson({jobs}, nodes={nodes}, seed=1)
nodes = nodes_from_table(synthetic_cluster_nodes({nodes}))
t0 = time.perf_counter()
res = simulate(jobs, nodes, queue=QueuePolicy("fcfs", "easy"))
dt = time.perf_counter() - t0
print(json.dumps({{"seconds": dt, "jobs": jobs.num_rows, "done": int((res.end >= 0).sum()),
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""

OPENB = """
import json, resource, time
from cplat.profile import POLICIES
from cplat.scheduler import QueuePolicy, nodes_from_table
from cplat.sim.run import simulate
from cplat.traces.openb_jobs import read_openb_jobs
t0 = time.perf_counter()
tr = read_openb_jobs("{pods}", "{nodes}")
res = simulate(tr.jobs, nodes_from_table(tr.nodes), placement=POLICIES["fgd"],
               queue=QueuePolicy("fcfs", "easy"))
dt = time.perf_counter() - t0
print(json.dumps({{"seconds": dt, "jobs": tr.jobs.num_rows, "done": int((res.end >= 0).sum()),
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def run(code: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description="cplat simulator benchmarks")
    ap.add_argument("--quick", action="store_true", help="100,000 jobs instead of 500,000 (CI)")
    ap.add_argument("--traces", type=Path, default=DEFAULT_TRACES)
    args = ap.parse_args()
    n = 100_000 if args.quick else 500_000
    rows = []
    r = run(SYNTHETIC.format(jobs=n, nodes=1024))
    rows.append(
        (
            f"FCFS+EASY replay, {r['jobs']:,} Lublin-Feitelson jobs, 1,024 nodes, 1 core",
            f"{r['jobs'] / r['seconds']:,.0f} jobs/s, {r['rss_mb']:,.0f} MB",
            ">= 20,000 jobs/s, <= 2 GB",
        )
    )
    pods = args.traces / "csv" / "openb_pod_list_default.csv"
    if pods.is_file():
        r = run(OPENB.format(pods=pods, nodes=args.traces / "csv" / "openb_node_list_gpu_node.csv"))
        rows.append(
            (
                f"openb time-driven replay (read + FGD placement), {r['jobs']:,} pods",
                f"{r['seconds']:.2f} s",
                "<= 5 s",
            )
        )
    else:
        rows.append(("openb time-driven replay", "skipped", f"trace not found at {pods}"))
    width = max(len(x[0]) for x in rows)
    print(f"machine: {machine()}")
    for name, value, goal in rows:
        print(f"{name:<{width}}  {value:>24}  target {goal}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
