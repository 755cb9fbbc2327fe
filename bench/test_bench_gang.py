"""Gang figures: the native greedy topology-aware placement of a 1,024-GPU gang and CP-SAT.

The greedy is gated against the numpy best-fit reference placing the gang's 128 eight-GPU
tasks one by one on the same (empty) 2,000-node cluster, timed before each seed's placements.
CP-SAT is time-limited and multi-threaded, so it is reported, and must never be worse.
"""

from __future__ import annotations

import statistics

import numpy as np
import pytest
from bench_gang import GANG, build, greedy_times
from conftest import record
from reference import reference_bestfit, timed

from cplat import topology
from cplat.model import TaskTable
from cplat.policy.gang import gang_objective, greedy_gang, solve_gang


def gang_tasks() -> TaskTable:
    n = GANG.count
    return TaskTable(
        name=tuple(f"t{i}" for i in range(n)),
        cpu_milli=np.full(n, GANG.cpu_milli, dtype=np.int64),
        memory_mib=np.full(n, GANG.memory_mib, dtype=np.int64),
        num_gpu=np.full(n, GANG.num_gpu, dtype=np.int32),
        gpu_milli=np.full(n, GANG.gpu_milli, dtype=np.int32),
        gpu_spec=("",) * n,
        models=np.zeros(n, dtype=np.uint64),
    )


@pytest.mark.figures("gang.greedy", "gang.cpsat")
def test_gang(benchmark, quick: bool) -> None:  # type: ignore[no-untyped-def]
    nodes = topology.fat_tree(10, 20, 10, 8).nodes
    tasks = gang_tasks()
    greedy: list[float] = []
    base: list[float] = []
    sat: list[float] = []

    def seeds() -> None:
        for seed in range(2 if quick else 5):
            state, engine = build(seed, 3200)
            base.append(timed(lambda: reference_bestfit(nodes, tasks)))
            greedy.extend(greedy_times(engine, GANG))
            code, placed = greedy_gang(engine, GANG)
            assert code == "ok"
            plan = solve_gang(state, engine, GANG, time_limit=1.0, workers=8, seed=seed)
            assert plan.objective is not None
            assert plan.objective <= gang_objective(state, GANG, placed)  # never worse
            sat.append(plan.seconds)

    benchmark.pedantic(seeds, rounds=1, iterations=1)
    g = statistics.median(greedy)
    record(benchmark, "gang.greedy", g * 1e3, g, statistics.median(base))
    record(benchmark, "gang.cpsat", statistics.median(sat))
