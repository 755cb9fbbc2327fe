"""Engine figures: single-GPU placement throughput and the openb static-packing runs.

Gated against ``reference.reference_bestfit`` (a numpy best-fit loop) over the same tasks, timed
before each round of the engine.
"""

from __future__ import annotations

import time

import pytest
from bench_engine import (
    DEFAULT_TRACES,
    fgd_openb_run,
    openb_60_runs,
    placement_run,
    read_openb,
    single_gpu_tasks,
)
from conftest import Interleaved, record
from reference import reference_bestfit

from cplat.pack.synthetic import synthetic_cluster


@pytest.fixture(scope="module")
def big_cluster():  # type: ignore[no-untyped-def]
    return synthetic_cluster(10_000, seed=0, gpus_per_node=8)


@pytest.fixture(scope="module")
def openb():  # type: ignore[no-untyped-def]
    data = read_openb(DEFAULT_TRACES)
    if data is None:
        pytest.skip(f"openb trace not found at {DEFAULT_TRACES} (set CPLAT_TRACES)")
    return data


@pytest.mark.parametrize(
    "policy",
    [
        pytest.param("bestfit", marks=pytest.mark.figures("engine.bestfit_rate")),
        pytest.param("fgd", marks=pytest.mark.figures("engine.fgd_rate")),
        pytest.param("random", marks=pytest.mark.figures("engine.random_rate")),
    ],
)
def test_placement_rate(benchmark, big_cluster, quick: bool, policy: str) -> None:  # type: ignore[no-untyped-def]
    # Quick mode places fewer tasks; the baseline places the same ones, so the ratio holds.
    tasks = single_gpu_tasks(big_cluster, 5_000 if quick else 20_000, seed=1)
    run = Interleaved(benchmark, lambda: reference_bestfit(big_cluster, tasks))
    run.run(placement_run(big_cluster, tasks, policy), rounds=3 if quick else 5)
    record(benchmark, f"engine.{policy}_rate", len(tasks) / run.subject_s,
           run.subject_s, run.baseline_s)  # fmt: skip


@pytest.mark.figures("engine.fgd_openb_run")
def test_fgd_openb_run(benchmark, openb, quick: bool) -> None:  # type: ignore[no-untyped-def]
    nodes, pods = openb
    run = Interleaved(benchmark, lambda: reference_bestfit(nodes, pods))
    run.run(fgd_openb_run(nodes, pods), rounds=5 if quick else 9)
    record(benchmark, "engine.fgd_openb_run", run.subject_s, run.subject_s, run.baseline_s)


@pytest.mark.figures("engine.openb_60_runs")
def test_openb_60_runs(benchmark, openb) -> None:  # type: ignore[no-untyped-def]
    # All cores, so not gated: on a shared 2-core machine its time is mostly other load.
    nodes, pods = openb
    t0 = time.perf_counter()
    benchmark.pedantic(openb_60_runs, args=(nodes, pods), rounds=1, iterations=1)
    record(benchmark, "engine.openb_60_runs", time.perf_counter() - t0)
