"""Policy benchmarks at scale: victim search, a full scheduling cycle, quota admissions.

python bench/bench_policies.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from bench_engine import machine

from cplat.model import GpuModels, NodeTable
from cplat.scheduler import JobColumns, QueuePolicy, Quota, Quotas, Scheduler


def cluster(n: int, cpus: int) -> NodeTable:
    return NodeTable(
        name=tuple(f"n{i}" for i in range(n)),
        cpu_milli=np.full(n, 1000 * cpus, dtype=np.int64),
        memory_mib=np.zeros(n, dtype=np.int64),
        num_gpu=np.zeros(n, dtype=np.int32),
        gpu_model=np.full(n, -1, dtype=np.int32),
        models=GpuModels(()),
    )


def columns(submit, requested, tasks, priority, groups) -> JobColumns:
    n = len(submit)
    return JobColumns(
        job_id=np.arange(n, dtype=np.int64),
        submit=np.asarray(submit, dtype=np.int64),
        duration=np.asarray(requested, dtype=np.int64),
        requested=np.asarray(requested, dtype=np.int64),
        estimated=np.zeros(n, dtype=bool),
        num_tasks=np.asarray(tasks, dtype=np.int32),
        cpu_milli=np.full(n, 1000, dtype=np.int64),
        memory_mib=np.zeros(n, dtype=np.int64),
        num_gpu=np.zeros(n, dtype=np.int32),
        gpu_milli=np.zeros(n, dtype=np.int32),
        models=np.zeros(n, dtype=np.uint64),
        priority=np.asarray(priority, dtype=np.int32),
        user=tuple("u" for _ in range(n)),
        group=tuple(groups),
    )


def victim_scheduler(rng: np.random.Generator) -> Scheduler:
    """1,000 nodes x 10 CPUs full of 10,000 one-CPU jobs; a priority head needs 64 CPUs."""
    s = Scheduler(cluster(1000, 10), queue=QueuePolicy("priority", preemption="priority"))
    n = 10_000
    low = s.add_jobs(
        columns(np.zeros(n), rng.integers(100, 10_000, n), np.ones(n), np.zeros(n), ["g"] * n)
    )
    s.submit(low)
    s.cycle(0)
    head = s.add_jobs(columns([500], [100], [64], [10], ["g"]))
    s.submit(head)
    return s


def victim_cycle(s: Scheduler) -> None:
    """The measured cycle: the head preempts at least 64 victims and starts."""
    started = s.cycle(500)
    assert len(started) == 1 and len(s.preempted()) >= 64


def victim_search(repeats: int) -> float:
    times = []
    rng = np.random.default_rng(0)
    for _ in range(repeats):
        s = victim_scheduler(rng)
        t0 = time.perf_counter()
        victim_cycle(s)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def big_cycle_scheduler(nodes: int, pending: int, rng: np.random.Generator) -> Scheduler:
    """`pending` queued jobs (2 % of them whole-cluster) on `nodes` half-busy nodes."""
    s = Scheduler(cluster(nodes, 1), queue=QueuePolicy("fcfs", "easy"))
    busy = s.add_jobs(
        columns(
            np.zeros(nodes // 2),
            rng.integers(100, 5000, nodes // 2),
            np.ones(nodes // 2),
            np.zeros(nodes // 2),
            ["g"] * (nodes // 2),
        )
    )
    s.submit(busy)
    s.cycle(0)
    sizes = np.where(rng.random(pending) < 0.02, nodes, rng.integers(1, 8, pending))
    jobs = s.add_jobs(
        columns(
            np.arange(pending) + 1,
            rng.integers(60, 20_000, pending),
            sizes,
            np.zeros(pending),
            ["g"] * pending,
        )
    )
    s.submit(jobs)
    return s


def big_cycle(nodes: int, pending: int, repeats: int) -> float:
    """One EASY cycle over `pending` queued jobs on `nodes` half-busy nodes."""
    times = []
    rng = np.random.default_rng(1)
    for _ in range(repeats):
        s = big_cycle_scheduler(nodes, pending, rng)
        t0 = time.perf_counter()
        s.cycle(pending + 1)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def quota_scheduler(projects: int, jobs_per: int) -> Scheduler:
    """`projects` quota'd projects sharing one cohort, `jobs_per` one-CPU jobs each queued."""
    quotas = Quotas(
        [Quota(f"p{i}", nominal=(4000, 0, 0), borrowing_limit=(4000, 0, 0), cohort="c")
         for i in range(projects)]
    )  # fmt: skip
    s = Scheduler(cluster(projects, 8), queue=QueuePolicy("fcfs"), quotas=quotas)
    n = projects * jobs_per
    groups = [f"p{i % projects}" for i in range(n)]
    idx = s.add_jobs(columns(np.zeros(n), np.full(n, 100), np.ones(n), np.zeros(n), groups))
    s.submit(idx)
    return s


def quota_admissions(projects: int, jobs_per: int) -> float:
    """Admissions per second with `projects` quota'd projects sharing one cohort."""
    s = quota_scheduler(projects, jobs_per)
    t0 = time.perf_counter()
    started = s.cycle(0)
    dt = time.perf_counter() - t0
    return len(started) / dt


def main() -> int:
    ap = argparse.ArgumentParser(description="cplat policy benchmarks")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    r = 3 if args.quick else 7
    rows = [
        ("victim search: 1,000 nodes, 10,000 running jobs (priority preemption)",
         f"{victim_search(r) * 1000:.1f} ms", "<= 100 ms"),
        ("EASY cycle: 10,000 pending jobs x 10,000 nodes",
         f"{big_cycle(10_000, 10_000, max(1, r // 2)) * 1000:.0f} ms", "<= 1,000 ms"),
        ("quota admissions: 1,000 projects in one cohort",
         f"{quota_admissions(1000, 8):,.0f} /s", ">= 1,000 /s"),
    ]  # fmt: skip
    width = max(len(x[0]) for x in rows)
    print(f"machine: {machine()}")
    for name, value, goal in rows:
        print(f"{name:<{width}}  {value:>12}  target {goal}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
