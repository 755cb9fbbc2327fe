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
from cplat.profile import PAPER_POLICIES, POLICIES
from cplat.synthetic import synthetic_cluster, synthetic_tasks
from cplat.traces import read_openb_nodes, read_openb_pods

DEFAULT_TRACES = (
    Path(__file__).resolve().parents[1].parent / "shared/traces/alibaba-gpu-v2023-openb"
)


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


def placement_rate(nodes, tasks: TaskTable, policy: str, repeats: int) -> float:
    target = target_workload(tasks)

    def once() -> None:
        engine = new_engine(new_state(nodes), POLICIES[policy], 1, target)
        engine.place_batch(
            tasks.cpu_milli, tasks.memory_mib, tasks.num_gpu, tasks.gpu_milli, tasks.models
        )

    return len(tasks) / median_time(once, repeats)


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

    openb = args.traces / "csv"
    if (openb / "openb_node_list_gpu_node.csv").is_file():
        nodes = read_openb_nodes(openb / "openb_node_list_gpu_node.csv")
        pods = read_openb_pods(openb / "openb_pod_list_default.csv", nodes.models)
        target_w = target_workload(pods)
        t = median_time(
            lambda: run_pack(
                nodes, pods, POLICIES["fgd"], 42, 1.3, workload_name="default", target=target_w
            ),
            repeats,
        )
        rows.append(
            (
                "FGD static packing run, openb default (8,152 pods tuned to 1.3x)",
                f"{t:.3f} s",
                "<= 2 s",
            )
        )
        profiles = [POLICIES[p] for p in PAPER_POLICIES]
        seeds = list(range(42, 52))
        t0 = time.perf_counter()
        run_many(nodes, pods, profiles, seeds, 1.3, workload_name="default")
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
