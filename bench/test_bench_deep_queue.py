"""Deep-queue figures: FCFS+EASY and FCFS+conservative on the RICC-shaped generated trace.

Each round is a fresh subprocess (its peak memory is its own) that also times the pure-Python
FCFS baseline on the same jobs after the measured run.
"""

from __future__ import annotations

import statistics

import pytest
from bench_deep_queue import QUICK_JOBS, RICC_JOBS, TARGETS, deep_queue_replay
from conftest import record


@pytest.mark.figures("sim.deep_easy_rate", "sim.deep_conservative_rate", "sim.deep_rss")
def test_deep_queue_replay(benchmark, quick: bool) -> None:  # type: ignore[no-untyped-def]
    jobs = QUICK_JOBS if quick else RICC_JOBS
    runs: dict[str, list[dict[str, float]]] = {"easy": [], "conservative": []}

    def once() -> None:
        for backfill, out in runs.items():
            out.append(deep_queue_replay(jobs, backfill))

    benchmark.pedantic(once, rounds=1)
    rss = 0.0
    for backfill, out in runs.items():
        assert all(r["done"] == r["jobs"] == jobs for r in out)
        subject = statistics.median(r["seconds"] for r in out)
        rate = jobs / subject
        target = TARGETS[backfill]
        print(
            f"deep-queue FCFS+{backfill}: {rate:,.0f} jobs/s, {rate / target:.2f}x of {target:,.0f}"
        )
        record(benchmark, f"sim.deep_{backfill}_rate", rate)
        rss = max(rss, *(r["rss_mb"] for r in out))
    record(benchmark, "sim.deep_rss", rss)
