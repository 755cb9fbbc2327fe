"""Simulator figures: FCFS+EASY replay throughput and memory, the openb time-driven replay.

Each round is a fresh subprocess (its peak memory is its own) that also times the pure-Python
FCFS baseline after the measured run: on the same jobs for the synthetic replay, on the fixed
baseline workload for the openb replay.
"""

from __future__ import annotations

import statistics

import pytest
from bench_engine import DEFAULT_TRACES
from bench_sim import openb_replay, synthetic_replay
from conftest import record


@pytest.mark.figures("sim.easy_rate", "sim.easy_rss")
def test_easy_replay(benchmark, quick: bool) -> None:  # type: ignore[no-untyped-def]
    jobs = 100_000 if quick else 500_000
    runs: list[dict[str, float]] = []
    benchmark.pedantic(
        lambda: runs.append(synthetic_replay(jobs, baseline=True)), rounds=3 if quick else 1
    )
    assert all(r["done"] == r["jobs"] == jobs for r in runs)
    subject = statistics.median(r["seconds"] for r in runs)
    baseline = statistics.median(r["baseline"] for r in runs)
    record(benchmark, "sim.easy_rate", jobs / subject, subject, baseline)
    record(benchmark, "sim.easy_rss", max(r["rss_mb"] for r in runs))


@pytest.mark.figures("sim.openb_replay")
def test_openb_replay(benchmark, quick: bool) -> None:  # type: ignore[no-untyped-def]
    if not (DEFAULT_TRACES / "csv" / "openb_pod_list_default.csv").is_file():
        pytest.skip(f"openb trace not found at {DEFAULT_TRACES} (set CPLAT_TRACES)")
    runs: list[dict[str, float]] = []

    def once() -> None:
        r = openb_replay(DEFAULT_TRACES, baseline=True)
        assert r is not None
        runs.append(r)

    benchmark.pedantic(once, rounds=3 if quick else 5)
    assert all(r["done"] == r["jobs"] for r in runs)
    subject = statistics.median(r["seconds"] for r in runs)
    record(benchmark, "sim.openb_replay", subject, subject,
           statistics.median(r["baseline"] for r in runs))  # fmt: skip
