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

# With baseline=True the fixed pure-Python FCFS baseline (bench/reference.py) is timed in the
# same subprocess after the measured run, once its peak memory has been read.
BENCH_DIR = str(Path(__file__).resolve().parent)

SYNTHETIC = """
import json, resource, sys, time
from cplat.scheduler import QueuePolicy, nodes_from_table
from cplat.sim.run import simulate
from cplat.workload import lublin_feitelson, synthetic_cluster_nodes
jobs = lublin_feitelson({jobs}, nodes={nodes}, seed=1)
nodes = nodes_from_table(synthetic_cluster_nodes({nodes}))
t0 = time.perf_counter()
res = simulate(jobs, nodes, queue=QueuePolicy("fcfs", "easy"))
dt = time.perf_counter() - t0
out = {{"seconds": dt, "jobs": jobs.num_rows, "done": int((res.end >= 0).sum()),
       "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}
if {baseline}:
    sys.path.insert(0, {bench_dir!r})
    from reference import reference_fcfs, timed
    cols = [jobs.column(c).to_pylist() for c in ("submit_time", "duration", "num_tasks")]
    out["baseline"] = sorted(timed(lambda: reference_fcfs(*cols, {nodes})) for _ in range(3))[1]
print(json.dumps(out))
"""

OPENB = """
import json, resource, sys, time
from cplat.profile import POLICIES
from cplat.scheduler import QueuePolicy, nodes_from_table
from cplat.sim.run import simulate
from cplat.traces.openb_jobs import read_openb_jobs
t0 = time.perf_counter()
tr = read_openb_jobs("{pods}", "{nodes}")
res = simulate(tr.jobs, nodes_from_table(tr.nodes), placement=POLICIES["fgd"],
               queue=QueuePolicy("fcfs", "easy"))
dt = time.perf_counter() - t0
out = {{"seconds": dt, "jobs": tr.jobs.num_rows, "done": int((res.end >= 0).sum()),
       "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}
if {baseline}:
    sys.path.insert(0, {bench_dir!r})
    from reference import fixed_python_baseline, timed
    base = fixed_python_baseline()
    out["baseline"] = sorted(timed(base) for _ in range(3))[1]
print(json.dumps(out))
"""


def run(code: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def synthetic_replay(jobs: int, nodes: int = 1024, baseline: bool = False) -> dict[str, float]:
    """FCFS+EASY replay of ``jobs`` Lublin-Feitelson jobs in a fresh process (own peak RSS)."""
    return run(SYNTHETIC.format(jobs=jobs, nodes=nodes, baseline=baseline, bench_dir=BENCH_DIR))


def openb_replay(traces: Path, baseline: bool = False) -> dict[str, float] | None:
    """The openb time-driven replay in a fresh process; None when the trace is absent."""
    pods = traces / "csv" / "openb_pod_list_default.csv"
    if not pods.is_file():
        return None
    nodes = traces / "csv" / "openb_node_list_gpu_node.csv"
    return run(OPENB.format(pods=pods, nodes=nodes, baseline=baseline, bench_dir=BENCH_DIR))


def main() -> int:
    ap = argparse.ArgumentParser(description="cplat simulator benchmarks")
    ap.add_argument("--quick", action="store_true", help="100,000 jobs instead of 500,000 (CI)")
    ap.add_argument("--traces", type=Path, default=DEFAULT_TRACES)
    args = ap.parse_args()
    n = 100_000 if args.quick else 500_000
    rows = []
    r = synthetic_replay(n)
    rows.append(
        (
            f"FCFS+EASY replay, {r['jobs']:,} Lublin-Feitelson jobs, 1,024 nodes, 1 core",
            f"{r['jobs'] / r['seconds']:,.0f} jobs/s, {r['rss_mb']:,.0f} MB",
            ">= 20,000 jobs/s, <= 2 GB",
        )
    )
    r = openb_replay(args.traces)
    if r is not None:
        rows.append(
            (
                f"openb time-driven replay (read + FGD placement), {r['jobs']:,} pods",
                f"{r['seconds']:.2f} s",
                "<= 5 s",
            )
        )
    else:
        rows.append(("openb time-driven replay", "skipped", f"trace not found at {args.traces}"))
    width = max(len(x[0]) for x in rows)
    print(f"machine: {machine()}")
    for name, value, goal in rows:
        print(f"{name:<{width}}  {value:>24}  target {goal}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
