"""Policy figures at scale: victim search, a 10,000 x 10,000 EASY cycle, quota admissions.

The scheduler state is built in each round's untimed setup; the timed part is the one cycle.
Gated against the fixed pure-Python FCFS baseline, timed in the same setup.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from bench_policies import (
    big_cycle_scheduler,
    quota_scheduler,
    victim_cycle,
    victim_scheduler,
)
from conftest import Interleaved, record
from reference import fixed_python_baseline


@pytest.fixture(scope="module")
def baseline():  # type: ignore[no-untyped-def]
    return fixed_python_baseline()


@pytest.mark.figures("policies.victim_search")
def test_victim_search(benchmark, baseline, quick: bool) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    run = Interleaved(benchmark, baseline)
    run.run(victim_cycle, rounds=3 if quick else 7,
            prepare=lambda: ((victim_scheduler(rng),), {}))  # fmt: skip
    record(benchmark, "policies.victim_search", run.subject_s * 1e3, run.subject_s, run.baseline_s)


@pytest.mark.figures("policies.easy_cycle")
def test_easy_cycle(benchmark, baseline, quick: bool) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    run = Interleaved(benchmark, baseline)
    run.run(lambda s: s.cycle(10_001), rounds=2 if quick else 3,
            prepare=lambda: ((big_cycle_scheduler(10_000, 10_000, rng),), {}))  # fmt: skip
    record(benchmark, "policies.easy_cycle", run.subject_s * 1e3, run.subject_s, run.baseline_s)


@pytest.mark.figures("policies.quota_admissions")
def test_quota_admissions(benchmark, baseline, quick: bool) -> None:  # type: ignore[no-untyped-def]
    started: list[int] = []

    def cycle(s: Any) -> None:
        started.append(len(s.cycle(0)))

    run = Interleaved(benchmark, baseline)
    run.run(cycle, rounds=3 if quick else 7, prepare=lambda: ((quota_scheduler(1000, 8),), {}))
    assert len(set(started)) == 1 and started[0] > 0
    record(benchmark, "policies.quota_admissions", started[0] / run.subject_s,
           run.subject_s, run.baseline_s)  # fmt: skip
