"""Engine benchmarks: placement throughput and static-packing run times.

Prints one table of medians with the targets from the engine issue. Benchmarks report; they
do not gate on absolute times (machines differ). ``--quick`` runs fewer repeats for CI.

    python bench/bench_engine.py [--quick] [--traces ../shared/traces/alibaba-gpu-v2023-openb]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cplat.cluster import new_engine, new_state
from cplat.fragmentation import target_workload
from cplat.model import TaskTable
from cplat.pack import run_many, run_pack
from cplat.pack.synthetic import synthetic_cluster, synthetic_tasks
from cplat.profile import PAPER_POLICIES, POLICIES
from cplat.traces import read_openb_nodes, read_openb_pods

#: Real traces live beside the repository (never copied into it); CPLAT_TRACES overrides.
TRACES = Path(
    os.environ.get("CPLAT_TRACES", Path(__file__).resolve().parents[1].parent / "shared/traces")
)
DEFAULT_TRACES = TRACES / "alibaba-gpu-v2023-openb"


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def single_gpu_tasks(nodes, count: int, seed: int) -> TaskTable:
    """Single-GPU tasks (fractions and whole devices) from the synthetic mix."""
    tasks = synthetic_tasks(nodes, seed=seed, load=2.0, cpu_only=0.0, share=0.45, multi_gpu=0.0)
    idx = np.flatnonzero((tasks.num_gpu == 1) & (tasks.models == 0))[:count]
    return tasks.take(idx)


def placement_run(nodes, tasks: TaskTable, policy: str) -> Callable[[], None]:
    """One run: a fresh engine over an empty cluster places ``tasks`` in one batch."""
    target = target_workload(tasks)

    def once() -> None:
        engine = new_engine(new_state(nodes), POLICIES[policy], 1, target)
        engine.place_batch(
            tasks.cpu_milli, tasks.memory_mib, tasks.num_gpu, tasks.gpu_milli, tasks.models
        )

    return once


def placement_rate(nodes, tasks: TaskTable, policy: str, repeats: int) -> float:
    return len(tasks) / median_time(placement_run(nodes, tasks, policy), repeats)


def read_openb(traces: Path):  # type: ignore[no-untyped-def]
    """(nodes, pods) of the openb default workload, or None when the trace is absent."""
    csv = traces / "csv"
    if not (csv / "openb_node_list_gpu_node.csv").is_file():
        return None
    nodes = read_openb_nodes(csv / "openb_node_list_gpu_node.csv")
    return nodes, read_openb_pods(csv / "openb_pod_list_default.csv", nodes.models)


def fgd_openb_run(nodes, pods) -> Callable[[], object]:
    """One FGD static packing run on openb default, tuned to 1.3x (the paper's protocol)."""
    target_w = target_workload(pods)
    return lambda: run_pack(
        nodes, pods, POLICIES["fgd"], 42, 1.3, workload_name="default", target=target_w
    )


def openb_60_runs(nodes, pods) -> None:
    """The paper's six policies x ten seeds on openb default, on all cores."""
    profiles = [POLICIES[p] for p in PAPER_POLICIES]
    run_many(nodes, pods, profiles, list(range(42, 52)), 1.3, workload_name="default")


def main() -> int:
    ap = argparse.ArgumentParser(description="cplat engine benchmarks")
    ap.add_argument("--quick", action="store_true", help="fewer repeats and tasks (CI)")
    ap.add_argument("--traces", type=Path, default=DEFAULT_TRACES)
    args = ap.parse_args()
    repeats = 3 if args.quick else 7
    rows: list[tuple[str, str, str]] = []

    big = synthetic_cluster(10_000, seed=0, gpus_per_node=8)
    count = 5_000 if args.quick else 20_000
    tasks = single_gpu_tasks(big, count, seed=1)
    for policy, target in (("bestfit", 20_000), ("fgd", 5_000), ("random", None)):
        rate = placement_rate(big, tasks, policy, repeats)
        goal = f">= {target:,}/s" if target else "-"
        rows.append(
            (
                f"{policy}: single-GPU placements/s, 10,000 nodes x 8 GPUs, 1 core",
                f"{rate:,.0f}",
                goal,
            )
        )

    openb = read_openb(args.traces)
    if openb is not None:
        nodes, pods = openb
        t = median_time(fgd_openb_run(nodes, pods), repeats)
        rows.append(
            (
                "FGD static packing run, openb default (8,152 pods tuned to 1.3x)",
                f"{t:.3f} s",
                "<= 2 s",
            )
        )
        t0 = time.perf_counter()
        openb_60_runs(nodes, pods)
        t60 = time.perf_counter() - t0
        rows.append(
            (
                "60 runs (6 policies x 10 seeds) on default, all cores",
                f"{t60:.1f} s",
                f"540 runs <= 600 s (est. {9 * t60:.0f} s)",
            )
        )
    else:
        rows.append(("openb runs", "skipped", f"trace not found at {args.traces}"))

    width = max(len(r[0]) for r in rows)
    print(f"machine: {machine()}")
    print(f"{'benchmark':<{width}}  {'median':>12}  target")
    for name, value, goal in rows:
        print(f"{name:<{width}}  {value:>12}  {goal}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
