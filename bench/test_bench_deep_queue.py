"""Deep-queue figures: FCFS+EASY (exact) and FCFS+conservative (Slurm's default bounds).

The trace is the generated RICC-shaped one (``cplat.traces.deep_queue``). Each replay is a
fresh subprocess (its peak memory is its own) that also times the pure-Python FCFS reference
loop on the same jobs after the measured run: the gate is on that same-run ratio.
"""

from __future__ import annotations

import pytest
from bench_deep_queue import QUICK_JOBS, RICC_JOBS, TARGETS, deep_queue_replay
from conftest import record


@pytest.mark.figures("sim.deep_easy_rate", "sim.deep_conservative_rate", "sim.deep_rss")
def test_deep_queue_replay(benchmark, quick: bool) -> None:  # type: ignore[no-untyped-def]
    jobs = QUICK_JOBS if quick else RICC_JOBS
    runs: dict[str, dict[str, float]] = {}

    def once() -> None:
        for policy in ("easy", "conservative"):
            runs[policy] = deep_queue_replay(jobs, policy, baseline=True)

    benchmark.pedantic(once, rounds=1)
    for policy, r in runs.items():
        assert r["done"] == r["jobs"] == jobs
        rate = jobs / r["seconds"]
        target = TARGETS[policy]
        print(f"deep-queue FCFS+{policy}: {rate:,.0f} jobs/s, {rate / target:.2f}x of target")
        record(benchmark, f"sim.deep_{policy}_rate", rate, r["seconds"], r["baseline"])
    record(benchmark, "sim.deep_rss", max(r["rss_mb"] for r in runs.values()))
