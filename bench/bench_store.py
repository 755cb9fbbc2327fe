"""Store write benchmark: ``create_jobs([one job])`` from many concurrent coroutines.

Prints calls/s and p50/p99 latency of each call (submitted to durable answer) for the SQLite
store (a fresh file in a temporary directory: WAL, synchronous=FULL, group commit) and, when
``CPLAT_TEST_PG_DSN`` is set, for the PostgreSQL store (a fresh schema, dropped afterwards).
The target is well over 1,000 calls/s from 32 coroutines.

Usage: ``python bench/bench_store.py [--quick] [--calls N] [--concurrency C]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from bench_engine import machine

from cplat.store import NewJob, Store, open_store

TARGET_CALLS_PER_S = 1000.0


async def hammer(store: Store, calls: int, concurrency: int) -> tuple[float, list[float]]:
    spec = {"tasks": {"count": 1, "resources": {"cpu_milli": 1000, "memory_mib": 1024}}}
    latencies: list[float] = []
    remaining = calls

    async def worker(w: int) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            job = NewJob("bench", f"user{w}", "job", spec, time.time())
            t0 = time.perf_counter()
            await store.create_jobs([job])
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return time.perf_counter() - t0, latencies


def report(name: str, elapsed: float, latencies: list[float]) -> float:
    rate = len(latencies) / elapsed
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    print(
        f"{name:<10} {len(latencies):>7} calls  {rate:>9,.0f} calls/s  "
        f"p50 {q[49] * 1e3:6.2f} ms  p99 {q[98] * 1e3:6.2f} ms"
    )
    return rate


async def bench(url: str, name: str, calls: int, concurrency: int) -> float:
    store = await open_store(url)
    try:
        await hammer(store, min(calls // 10, 500), concurrency)  # warm up connections, caches
        elapsed, latencies = await hammer(store, calls, concurrency)
    finally:
        await store.close()
    return report(name, elapsed, latencies)


async def with_pg_schema(dsn: str, calls: int, concurrency: int) -> float:
    import asyncpg  # only needed when a PostgreSQL DSN is given

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        sep = "&" if "?" in dsn else "?"
        return await bench(f"{dsn}{sep}search_path={schema}", "postgres", calls, concurrency)
    finally:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls (CI)")
    parser.add_argument("--calls", type=int, default=None, help="calls per backend")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent coroutines")
    args = parser.parse_args()
    calls = args.calls or (3000 if args.quick else 20000)

    print(f"machine: {machine()}")
    print(f"create_jobs([one job]) from {args.concurrency} coroutines, durable answers")
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="cplat-bench-store-") as tmp:
        rates["sqlite"] = asyncio.run(
            bench(str(Path(tmp) / "bench.db"), "sqlite", calls, args.concurrency)
        )
    dsn = os.environ.get("CPLAT_TEST_PG_DSN")
    if dsn:
        rates["postgres"] = asyncio.run(with_pg_schema(dsn, calls, args.concurrency))
    else:
        print("postgres   skipped: set CPLAT_TEST_PG_DSN to benchmark the PostgreSQL store")
    for name, rate in rates.items():
        verdict = "ok" if rate >= TARGET_CALLS_PER_S else "BELOW TARGET"
        print(f"{name}: {rate:,.0f} calls/s vs target {TARGET_CALLS_PER_S:,.0f}: {verdict}")


if __name__ == "__main__":
    main()
