"""Store, service and live-cluster figures (the ``service`` extra).

The live cluster is gated against the fixed pure-Python FCFS baseline. The stores are
reported only: the SQLite figure is recorded beside one durable sqlite3 insert-and-commit at
a time in the same folder, but a VM's flush times swing that several-fold between runs;
PostgreSQL is a separate server. So is the service: subprocesses over loopback HTTP with the
clients on the same cores.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
from pathlib import Path

import pytest
from conftest import needs_service, record
from reference import fixed_python_baseline, sqlite_commits, timed

pytestmark = needs_service

BASELINE_COMMITS = 200


@pytest.mark.figures("store.sqlite_rate")
def test_store_sqlite(benchmark, quick: bool) -> None:  # type: ignore[no-untyped-def]
    from bench_store import bench

    calls = 3000 if quick else 20000
    subject: list[float] = []
    base: list[float] = []

    def once() -> None:
        with tempfile.TemporaryDirectory(prefix="cplat-bench-store-") as tmp:
            base.append(sqlite_commits(Path(tmp) / "base.db", BASELINE_COMMITS) / BASELINE_COMMITS)
            rate = asyncio.run(bench(str(Path(tmp) / "bench.db"), "sqlite", calls, 32))
            subject.append(1.0 / rate)

    benchmark.pedantic(once, rounds=3, iterations=1)
    per_call = statistics.median(subject)
    record(benchmark, "store.sqlite_rate", 1.0 / per_call, per_call, statistics.median(base))


@pytest.mark.figures("store.postgres_rate")
@pytest.mark.skipif(
    not os.environ.get("CPLAT_TEST_PG_DSN"), reason="set CPLAT_TEST_PG_DSN to bench PostgreSQL"
)
def test_store_postgres(benchmark, quick: bool) -> None:  # type: ignore[no-untyped-def]
    from bench_store import with_pg_schema

    dsn = os.environ["CPLAT_TEST_PG_DSN"]
    calls = 3000 if quick else 20000
    rates: list[float] = []
    benchmark.pedantic(
        lambda: rates.append(asyncio.run(with_pg_schema(dsn, calls, 32))), rounds=3, iterations=1
    )
    record(benchmark, "store.postgres_rate", statistics.median(rates))


@pytest.mark.figures("service.submit_rate", "service.submit_p99", "service.to_running")
def test_service(benchmark, quick: bool) -> None:  # type: ignore[no-untyped-def]
    from bench_service import submissions, to_running

    jobs = 1000 if quick else 5000
    sub: list[dict[str, float]] = []
    run: list[dict[str, float]] = []

    def once() -> None:
        with tempfile.TemporaryDirectory(prefix="cplat-bench-service-") as tmp:
            sub.append(asyncio.run(submissions(Path(tmp), "", jobs, 32)))
            run.append(asyncio.run(to_running(Path(tmp), "")))

    benchmark.pedantic(once, rounds=1 if quick else 3, iterations=1)
    assert all(s["failed"] == 0 for s in sub)
    record(benchmark, "service.submit_rate", statistics.median(s["rate"] for s in sub))
    record(benchmark, "service.submit_p99", statistics.median(s["p99"] for s in sub) * 1e3)
    record(benchmark, "service.to_running", statistics.median(r["median"] for r in run) * 1e3)


@pytest.mark.figures("live.register", "live.first_cycle", "live.rebuild")
def test_live(benchmark, quick: bool) -> None:  # type: ignore[no-untyped-def]
    from bench_live import run_once

    baseline = fixed_python_baseline()
    runs: list[dict[str, float]] = []
    base: list[float] = []

    def once() -> None:
        # The baseline is short beside the cycles: its median of three per round.
        base.append(statistics.median(timed(baseline) for _ in range(3)))
        runs.append(run_once(10_000))

    # Quick mode keeps the 10,000 nodes (the ratios depend on the size) with fewer rounds.
    benchmark.pedantic(once, rounds=1 if quick else 3, iterations=1)
    b = statistics.median(base)
    for key in ("register", "first_cycle", "rebuild"):
        t = statistics.median(r[key] for r in runs)
        record(benchmark, f"live.{key}", t * 1e3, t, b)
