"""Service load benchmark: ``cplat serve`` as a subprocess, driven over loopback HTTP.

(a) Submissions: CONCURRENCY clients (default 32) post N jobs (default 5,000; ``--quick``
1,000) to ``POST /v1/jobs`` as fast as they can, against a server with no nodes (the jobs stay
pending). Prints submits/s and p50/p95/p99 latency of the answered 201s.

(b) Submit to RUNNING: a fresh server and one ``cplat agent`` subprocess (an idle node); 20 tiny
jobs (``true``) submitted one at a time, each after the last ended. The time from the POST to
the job's RUNNING event on ``/v1/jobs/stream`` (server-sent events), with the server's own
timestamps splitting it into submit -> SCHEDULED (the scheduling loop) and SCHEDULED -> RUNNING
(assignment long poll, process start, task report).

Targets: >= 1,000 submits/s with p99 <= 50 ms; submit to RUNNING <= 100 ms (median). Each is
printed with PASS or MISS; the script exits 0 either way (benchmarks report, they don't gate).

The store is SQLite in a fresh temporary data dir, or ``--db postgresql://...`` (each phase
gets a fresh schema of its own, dropped afterwards). Clients and server share this machine's
CPUs, so on a small machine the clients' own work counts against the server.

Usage: ``python bench/bench_service.py [--quick] [--jobs N] [--concurrency C] [--db URL]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from bench_engine import machine

from cplat_server.auth import create_token

SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
ADMIN = create_token(SECRET, "root", "system", "admin", cluster_admin=True, ttl=86400)
TARGET_RATE = 1000.0  # submits/s
TARGET_P99 = 0.050  # s
TARGET_TO_RUNNING = 0.100  # s, median
TINY_JOBS = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:7.2f} ms"


# --- processes ----------------------------------------------------------------------------------


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CPLAT_JWT_SECRET": SECRET}
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cplat.cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.asynccontextmanager
async def pg_schema(dsn: str) -> AsyncIterator[str]:
    """A fresh schema in ``dsn`` for one server; yields the URL that selects it."""
    import asyncpg  # only needed when a PostgreSQL URL is given

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        sep = "&" if "?" in dsn else "?"
        yield f"{dsn}{sep}search_path={schema}"
    finally:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path


@contextlib.asynccontextmanager
async def server(tmp: Path, name: str, db: str) -> AsyncIterator[Server]:
    """``cplat serve --no-local-agent`` on a fresh data dir (and schema), until healthy."""
    port = free_port()
    log = tmp / f"{name}.log"
    args = ["serve", "--data-dir", str(tmp / name), "--port", str(port), "--no-local-agent"]
    async with contextlib.AsyncExitStack() as stack:
        if db:
            args += ["--db", await stack.enter_async_context(pg_schema(db))]
        proc = spawn(args, log)
        stack.callback(stop, proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as s:
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(url + "/healthz") as r:
                        if r.status == 200:
                            break
                if proc.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"the server did not start; see {log}:\n{log.read_text()[-2000:]}")
                await asyncio.sleep(0.05)
        yield Server(url, proc, log)


def job(name: str, command: Any) -> dict[str, Any]:
    return {
        "name": name,
        "command": command,
        "tasks": {"count": 1, "resources": {"cpu_milli": 100, "memory_mib": 16}},
    }


# --- (a) submissions ----------------------------------------------------------------------------


async def hammer(
    session: aiohttp.ClientSession, url: str, prefix: str, n: int, concurrency: int
) -> tuple[float, list[float], list[float], int]:
    """Post ``n`` jobs from ``concurrency`` clients.

    Returns (elapsed, latencies of the 201s, their completion times from the start, failures).
    """
    headers = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"}
    bodies = iter(json.dumps(job(f"{prefix}{i}", ["true"])).encode() for i in range(n))
    latencies: list[float] = []
    done: list[float] = []
    failed = 0
    start = time.perf_counter()

    async def client() -> None:
        nonlocal failed
        for body in bodies:
            t0 = time.perf_counter()
            async with session.post(url + "/v1/jobs", data=body, headers=headers) as r:
                await r.read()
                t1 = time.perf_counter()
                if r.status == 201:
                    latencies.append(t1 - t0)
                    done.append(t1 - start)
                else:
                    failed += 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - start, latencies, done, failed


def rates_by_part(done: list[float], parts: int = 5) -> list[float]:
    """Submits/s over consecutive equal parts of the run (a falling rate: cost grows with
    the number of queued jobs)."""
    done = sorted(done)
    size = len(done) // parts
    out = []
    prev = 0.0
    for i in range(parts):
        end = done[(i + 1) * size - 1]
        out.append(size / max(end - prev, 1e-9))
        prev = end
    return out


async def submissions(tmp: Path, db: str, n: int, concurrency: int) -> dict[str, float]:
    """Phase (a); prints it and returns rate, p50/p95/p99 (s), failures and ok (1.0/0.0)."""
    async with server(tmp, "submit", db) as srv:
        conn = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=conn) as session:
            await hammer(session, srv.url, "warm-", min(200, n), concurrency)  # connections
            elapsed, lat, done, failed = await hammer(session, srv.url, "b-", n, concurrency)
    rate = len(lat) / elapsed
    q = statistics.quantiles(lat, n=100, method="inclusive")
    p50, p95, p99 = q[49], q[94], q[98]
    ok = rate >= TARGET_RATE and p99 <= TARGET_P99
    print(f"(a) {n} submissions from {concurrency} clients ({failed} not answered 201)")
    print(f"    rate {rate:9,.0f} submits/s   target >= {TARGET_RATE:,.0f}")
    parts = " ".join(f"{r:,.0f}" for r in rates_by_part(done))
    print(f"    by fifth of the run (queue growing): {parts} submits/s")
    print(f"    p50 {ms(p50)}  p95 {ms(p95)}  p99 {ms(p99)}   target p99 <= {ms(TARGET_P99)}")
    print(f"    {verdict(ok)}")
    return {"rate": rate, "p50": p50, "p95": p95, "p99": p99, "failed": failed, "ok": float(ok)}


# --- (b) submit to RUNNING ----------------------------------------------------------------------


class Stream:
    """``/v1/jobs/stream`` read in the background: (id, state) -> (local time, server ``at``)."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, str], tuple[float, float]] = {}
        self.changed = asyncio.Event()
        self.ready = asyncio.Event()

    async def run(self, session: aiohttp.ClientSession, url: str) -> None:
        headers = {"Authorization": f"Bearer {ADMIN}"}
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with session.get(url + "/v1/jobs/stream", headers=headers, timeout=timeout) as r:
            assert r.status == 200, await r.text()
            self.ready.set()
            async for raw in r.content:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                ev = json.loads(line[5:])
                self.seen[(int(ev["id"]), str(ev["state"]))] = (time.time(), float(ev["at"]))
                self.changed.set()

    async def wait(self, job_id: int, states: set[str], timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for s in states:
                if (job_id, s) in self.seen:
                    return s
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"job {job_id} never reached {states}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)


async def to_running(tmp: Path, db: str) -> dict[str, float]:
    """Phase (b); prints it and returns the median and max (s) and ok (1.0/0.0)."""
    async with server(tmp, "run", db) as srv, aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {ADMIN}"}
        agent = spawn(
            [
                "agent",
                "--server",
                srv.url,
                "--token",
                ADMIN,
                "--name",
                "bench-node",
                "--work-dir",
                str(tmp / "agent"),
            ],
            tmp / "agent.log",
        )
        stream = Stream()
        reader = asyncio.create_task(stream.run(session, srv.url))
        try:
            deadline = time.monotonic() + 30
            while True:
                async with session.get(srv.url + "/v1/nodes/bench-node", headers=headers) as r:
                    if r.status == 200:
                        break
                if agent.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"the agent did not register; see {tmp / 'agent.log'}")
                await asyncio.sleep(0.05)
            await asyncio.wait_for(stream.ready.wait(), 10)
            total: list[float] = []
            placed: list[float] = []
            started: list[float] = []
            for i in range(TINY_JOBS):
                t0 = time.time()
                async with session.post(
                    srv.url + "/v1/jobs", json=job(f"tiny-{i}", ["true"]), headers=headers
                ) as r:
                    answer = await r.json()
                    assert r.status == 201, answer
                job_id = int(answer["id"])
                await stream.wait(job_id, {"RUNNING"})
                seen, running_at = stream.seen[(job_id, "RUNNING")]
                scheduled_at = stream.seen[(job_id, "SCHEDULED")][1]
                total.append(seen - t0)
                placed.append(scheduled_at - float(answer["submitted_at"]))
                started.append(running_at - scheduled_at)
                end = await stream.wait(job_id, {"SUCCEEDED", "FAILED", "CANCELLED"})
                assert end == "SUCCEEDED", (job_id, end)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            stop(agent)
    med = statistics.median(total)
    ok = med <= TARGET_TO_RUNNING
    print(f"(b) submit -> RUNNING, {TINY_JOBS} tiny jobs one at a time on an idle node")
    print(f"    median {ms(med)}  max {ms(max(total))}   target median <= {ms(TARGET_TO_RUNNING)}")
    print(
        f"    of which submit -> SCHEDULED median {ms(statistics.median(placed))}, "
        f"SCHEDULED -> RUNNING median {ms(statistics.median(started))} (server clock)"
    )
    print(f"    {verdict(ok)}")
    return {"median": med, "max": max(total), "ok": float(ok)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 submissions instead of 5,000")
    parser.add_argument("--jobs", type=int, default=None, help="submissions in (a)")
    parser.add_argument("--concurrency", type=int, default=32, help="clients in (a)")
    parser.add_argument("--db", default="", help="postgresql://... (default: SQLite)")
    args = parser.parse_args()
    n = args.jobs or (1000 if args.quick else 5000)

    print(f"machine: {machine()}")
    print(f"store: {'PostgreSQL' if args.db else 'SQLite (fresh data dir)'}")
    with tempfile.TemporaryDirectory(prefix="cplat-bench-service-") as tmp:
        results = [
            bool(asyncio.run(submissions(Path(tmp), args.db, n, args.concurrency))["ok"]),
            bool(asyncio.run(to_running(Path(tmp), args.db))["ok"]),
        ]
    print(f"overall: {' '.join(verdict(r) for r in results)}")


if __name__ == "__main__":
    main()
