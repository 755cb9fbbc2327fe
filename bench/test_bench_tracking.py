"""Tracking figures: the same mlflow client calls on ``mlflow server`` and ``cplat serve``.

Gated against ``mlflow server`` (SQLite backend, one worker) run in the same process tree, at
the same time, with the same data (see ``bench_tracking.py``). ``mlflow`` is an optional
dependency of the suite: without it the figures are skipped.
"""

from __future__ import annotations

import pytest
from conftest import needs_service, record

pytestmark = needs_service

KEYS = (
    "tracking.log_batch",
    "tracking.history",
    "tracking.history_http",
    "tracking.search_runs",
    "tracking.search_models",
)


@pytest.mark.figures(*KEYS)
def test_tracking(benchmark, quick: bool) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("mlflow", reason="needs mlflow (the comparison's other side)")
    from bench_tracking import FULL, QUICK, measure

    sizes = QUICK if quick else FULL
    results: dict[str, tuple[float, float]] = {}
    # One round of the whole comparison (it starts two servers and seeds them); the reads
    # inside it are medians of their own rounds.
    benchmark.pedantic(
        lambda: results.update(measure(sizes, 3 if quick else 5)), rounds=1, iterations=1
    )
    m, c = results["log_batch"]
    record(benchmark, "tracking.log_batch", sizes.points / c, c, m)
    m, c = results["history"]
    record(benchmark, "tracking.history", c * 1e3, c, m)
    m, c = results["history/http"]
    record(benchmark, "tracking.history_http", c * 1e3, c, m)
    m, c = results["search_runs"]
    record(benchmark, "tracking.search_runs", c * 1e3, c, m)
    m, c = results["search_models"]
    record(benchmark, "tracking.search_models", c * 1e3, c, m)
