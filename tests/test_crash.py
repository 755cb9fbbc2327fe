"""Crash safety with real processes: ``kill -9`` the server in the middle of a submission burst.

A ``cplat serve`` subprocess and an external ``cplat agent`` subprocess; 2,000 concurrent
submissions; the server is SIGKILLed once about 600 have been answered 201, then restarted on the
same data dir (and database). Every answered job must have survived, exactly once; nothing may
be over-allocated; the server's RUNNING jobs and the processes the agent really runs must agree
once the agent has reported in; cancelling everything must leave no process behind.

Every task writes its own pid to ``<pids>/<job>.<attempt>.<rank>`` and carries a marker in its
environment, so the test can tell its processes from anything else on the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cplat_server.auth import create_token

SECRET = "crash-secret-0123456789abcdef0123456789abcdef"
PG_DSN = os.environ.get("CPLAT_TEST_PG_DSN", "")
PY = sys.executable
NODE = "node-a"
SUBMISSIONS = 2000
CONCURRENCY = 64
KILL_AFTER = 600
#: Jobs that fit the node at once (each asks for 1/RUNNABLE of its CPUs).
RUNNABLE = 6
#: High-priority jobs of SHORT_SLEEP seconds submitted before the burst: they churn through the
#: node's slots across the kill and the restart.
SHORT_JOBS = 24
SHORT_SLEEP = 0.5
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}
PLACED = {"SCHEDULED", "RUNNING"}
ADMIN = create_token(SECRET, "root", "system", "admin", cluster_admin=True, ttl=3600)
MARK_VAR = "CPLAT_CRASH_MARK"

BACKENDS = [
    "sqlite",
    pytest.param(
        "postgres",
        marks=pytest.mark.skipif(
            not PG_DSN, reason="set CPLAT_TEST_PG_DSN to run the crash test against PostgreSQL"
        ),
    ),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reset_postgres(dsn: str) -> None:
    import asyncpg

    async def reset() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        finally:
            await conn.close()

    asyncio.run(reset())


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- processes -----------------------------------------------------------------------------


@dataclass
class Procs:
    """Every child process of the test, so that the finally block can end them all."""

    tmp: Path
    mark: str
    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        env = {**os.environ, "CPLAT_JWT_SECRET": SECRET, "PYTHONUNBUFFERED": "1"}
        with open(self.tmp / f"{name}.log", "ab") as logfile:
            proc = subprocess.Popen(
                [PY, "-m", "cplat.cli", *args],
                stdout=logfile,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group, killed as one
            )
        self.children.append((name, proc))
        return proc

    def end_all(self) -> None:
        # Agents first, while a server may still take their last reports; then the servers.
        agents = [p for name, p in self.children if name.startswith("agent")]
        servers = [p for name, p in self.children if not name.startswith("agent")]
        for group in (agents, servers):
            for proc in group:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            for proc in group:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        # Tasks lead sessions of their own: a killed agent leaves them behind.
        for pid in task_pids(self.tmp / "pids", self.mark).values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def alive(pid: int, mark: str) -> bool:
    """Whether ``pid`` runs (not a zombie) and is one of this test's tasks."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X") and f"{MARK_VAR}={mark}".encode() in env


def task_pids(pid_dir: Path, mark: str) -> dict[tuple[int, int], int]:
    """(job id, attempt) -> pid of every live task process of this test."""
    out: dict[tuple[int, int], int] = {}
    for path in pid_dir.glob("*.*.*"):
        try:
            job, attempt, _rank = (int(x) for x in path.name.split("."))
            pid = int(path.read_text().strip())
        except ValueError:
            continue  # written but not flushed yet
        if alive(pid, mark):
            out[(job, attempt)] = pid
    return out


# --- the API ----------------------------------------------------------------------------------


class Api:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url
        self.headers = {"Authorization": f"Bearer {ADMIN}"}

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.session.request(method, self.url + path, headers=self.headers, **kw) as r:
            return r.status, await r.json(content_type=None)

    async def ok(self, method: str, path: str, **kw: Any) -> Any:
        status, body = await self.call(method, path, **kw)
        assert status < 300, (method, path, status, body)
        return body

    async def healthy(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with self.session.get(self.url + "/healthz") as r:
                    if r.status == 200:
                        return
            assert time.monotonic() < deadline, "the server did not become healthy"
            await asyncio.sleep(0.05)

    async def all_jobs(self) -> list[dict[str, Any]]:
        jobs: list[dict[str, Any]] = []
        query = "limit=1000"
        while True:
            page = await self.ok("GET", f"/v1/jobs?{query}")
            jobs += page["jobs"]
            if page["next_cursor"] is None:
                return jobs
            query = f"limit=1000&cursor={page['next_cursor']}"

    async def node(self) -> dict[str, Any]:
        return dict(await self.ok("GET", f"/v1/nodes/{NODE}"))


@dataclass
class Burst:
    answered: dict[str, int] = field(default_factory=dict)  # name -> id, answered 201
    refused: list[tuple[str, int]] = field(default_factory=list)  # (name, status) not 201
    lost: int = 0  # no answer (the server died under them)
    killed_at: float = 0.0


async def burst(api: Api, server: subprocess.Popen[bytes], body: Any, names: list[str]) -> Burst:
    """Submit ``names`` from CONCURRENCY clients; SIGKILL the server after KILL_AFTER 201s."""
    out = Burst()
    todo = iter(names)

    async def client() -> None:
        for name in todo:
            if out.killed_at:
                return
            try:
                status, job = await api.call("POST", "/v1/jobs", json=body(name))
            except (aiohttp.ClientError, asyncio.TimeoutError):
                out.lost += 1
                continue
            if status != 201:
                out.refused.append((name, status))
                continue
            assert job["name"] == name, job
            out.answered[name] = int(job["id"])
            if len(out.answered) >= KILL_AFTER and not out.killed_at:
                out.killed_at = time.time()
                server.send_signal(signal.SIGKILL)  # kill -9, with requests in flight

    await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    return out


# --- invariants -------------------------------------------------------------------------------


def check_allocation(jobs: list[dict[str, Any]], nodes: list[dict[str, Any]]) -> None:
    """No node's CPU or memory, and no GPU's share, is promised twice."""
    cap = {n["name"]: n for n in nodes}
    cpu: Counter[str] = Counter()
    mem: Counter[str] = Counter()
    gpu: Counter[tuple[str, int]] = Counter()
    for job in jobs:
        if job["state"] not in PLACED:
            continue
        res = job["tasks"]["resources"]
        assert len(job["placement"]) == job["tasks"]["count"], job
        for p in job["placement"]:
            assert p["node"] in cap, job
            assert len(p["gpus"]) == res["num_gpu"], job
            cpu[p["node"]] += res["cpu_milli"]
            mem[p["node"]] += res["memory_mib"]
            for g in p["gpus"]:
                gpu[(p["node"], g)] += res["gpu_milli"]
    for name, used in cpu.items():
        assert used <= cap[name]["cpu_milli"], f"{name}: {used} mCPU placed"
        assert mem[name] <= cap[name]["memory_mib"], f"{name}: {mem[name]} MiB placed"
    for (name, g), used in gpu.items():
        assert g in {int(x["index"]) for x in cap[name]["gpus"]}, (name, g)
        assert used <= 1000, f"{name} GPU {g}: {used} milli placed"
    for n in nodes:
        a = n["allocated"]
        assert a["cpu_milli"] <= n["cpu_milli"] and a["memory_mib"] <= n["memory_mib"], n
        assert a["gpu_milli"] <= 1000 * len(n["gpus"]), n


def reconciled(jobs: list[dict[str, Any]], live: dict[tuple[int, int], int]) -> tuple[bool, str]:
    """Server RUNNING on the node == task processes alive; nothing runs for another state."""
    placed = {(j["id"], j["attempt"]): j["state"] for j in jobs if j["state"] in PLACED}
    running = {k for k, s in placed.items() if s == "RUNNING"}
    scheduled = {k for k, s in placed.items() if s == "SCHEDULED"}
    without = running - set(live)
    stray = set(live) - running
    why = []
    if without:
        why.append(f"RUNNING without a process: {sorted(without)[:10]}")
    if stray:
        why.append(f"processes the server does not consider RUNNING: {sorted(stray)[:10]}")
    if scheduled:
        why.append(f"still SCHEDULED: {sorted(scheduled)[:10]}")
    return not why, "; ".join(why)


async def settle(
    api: Api, pid_dir: Path, mark: str, finite: set[str], timeout: float = 20
) -> list[dict[str, Any]]:
    """Wait until the jobs named ``finite`` ended and the server's view and the real processes
    agree (or fail saying how not)."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = await api.all_jobs()
        ok, why = reconciled(jobs, task_pids(pid_dir, mark))
        left = [j["name"] for j in jobs if j["name"] in finite and j["state"] not in TERMINAL]
        if left:
            ok, why = False, f"{why}; short jobs not finished: {left[:10]}"
        if ok:
            return jobs
        assert time.monotonic() < deadline, f"not reconciled after {timeout}s: {why}"
        await asyncio.sleep(0.1)


# --- the test ---------------------------------------------------------------------------------


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path, uuid.uuid4().hex)
    try:
        yield p
    finally:
        p.end_all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_kill_9_mid_burst(tmp_path: Path, backend: str, procs: Procs) -> None:
    db: list[str] = []
    if backend == "postgres":
        reset_postgres(PG_DSN)
        db = ["--db", PG_DSN]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data, work, pid_dir = tmp_path / "data", tmp_path / "agent", tmp_path / "pids"
    pid_dir.mkdir()
    serve = [
        "serve",
        "--data-dir",
        str(data),
        "--port",
        str(port),
        "--no-local-agent",
        "--node-timeout",
        "5",
        *db,
    ]
    agent_args = [
        "agent",
        "--server",
        url,
        "--token",
        ADMIN,
        "--name",
        NODE,
        "--work-dir",
        str(work),
        "--heartbeat",
        "0.5",
    ]
    pids = shlex.quote(str(pid_dir))

    def body(name: str, cpu: int) -> dict[str, Any]:
        short = name.startswith("s-")
        return {
            "name": name,
            "command": f"echo $$ > {pids}/$CPLAT_JOB_ID.$CPLAT_ATTEMPT.$RANK; "
            f"exec sleep {SHORT_SLEEP if short else 300}",
            "env": {MARK_VAR: procs.mark},
            "priority": 10 if short else 0,
            "tasks": {"count": 1, "resources": {"cpu_milli": cpu, "memory_mib": 8}},
            "max_runtime": 600,
        }

    async def main() -> None:
        server = procs.spawn("server-1", serve)
        conn = aiohttp.TCPConnector(limit=CONCURRENCY)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
            api = Api(session, url)
            try:
                await api.healthy()
            except AssertionError:
                raise AssertionError(tail(tmp_path / "server-1.log")) from None
            agent = procs.spawn("agent", agent_args)
            deadline = time.monotonic() + 15
            while (await api.call("GET", f"/v1/nodes/{NODE}"))[0] != 200:
                assert agent.poll() is None, tail(tmp_path / "agent.log")
                assert time.monotonic() < deadline, "the agent did not register"
                await asyncio.sleep(0.05)
            cpu = max(1, (await api.node())["cpu_milli"] // RUNNABLE)

            # A few long jobs that run across the kill and the restart; short high-priority
            # jobs in the other slots, so that tasks start, exit and get replaced while the
            # server dies and while it is away; then the burst of long ones.
            firsts = [f"l-{i}" for i in range(RUNNABLE // 2)]
            shorts = [f"s-{i:03d}" for i in range(SHORT_JOBS)]
            answered: dict[str, int] = {}
            for name in firsts:
                job = await api.ok("POST", "/v1/jobs", json=body(name, cpu))
                answered[name] = int(job["id"])
            deadline = time.monotonic() + 15
            while len(task_pids(pid_dir, procs.mark)) < len(firsts):
                assert time.monotonic() < deadline, "the first jobs did not start"
                await asyncio.sleep(0.05)
            for name in shorts:
                job = await api.ok("POST", "/v1/jobs", json=body(name, cpu))
                answered[name] = int(job["id"])
            names = [f"c-{i:04d}" for i in range(SUBMISSIONS)]
            result = await burst(api, server, lambda name: body(name, cpu), names)
            answered.update(result.answered)
            server.wait(timeout=10)
            assert server.returncode == -signal.SIGKILL, server.returncode
            assert len(result.answered) >= KILL_AFTER, (result, tail(tmp_path / "server-1.log"))
            assert not result.refused, result.refused[:10]
            before_kill = task_pids(pid_dir, procs.mark)

            # The agent must outlive the server on its own; its tasks go on meanwhile.
            await asyncio.sleep(1.0)
            assert agent.poll() is None, tail(tmp_path / "agent.log")
            restarted = time.time()
            procs.spawn("server-2", serve)
            try:
                await api.healthy()
            except AssertionError:
                raise AssertionError(tail(tmp_path / "server-2.log")) from None

            jobs = await api.all_jobs()
            nodes = (await api.ok("GET", "/v1/nodes"))["nodes"]
            check_allocation(jobs, nodes)

            # 1. Every answered job exists, once, under the name it was submitted with.
            ids = [j["id"] for j in jobs]
            assert len(ids) == len(set(ids)), "duplicate job ids"
            by_name = Counter(j["name"] for j in jobs)
            dup = [n for n, c in by_name.items() if c > 1]
            assert not dup, f"jobs stored twice: {dup[:10]}"
            known = {*firsts, *shorts, *names}
            assert set(by_name) <= known, set(by_name) - known
            stored = {j["name"]: j["id"] for j in jobs}
            missing = {n: i for n, i in answered.items() if stored.get(n) != i}
            assert not missing, f"{len(missing)} answered jobs lost or renumbered: {missing}"
            # At most the requests in flight at the kill were committed without an answer.
            unanswered = len(jobs) - len(answered)
            assert 0 <= unanswered <= CONCURRENCY, (len(jobs), len(answered))

            # 2. The agent reconnects on its own, and reality and the server agree.
            deadline = time.monotonic() + 15
            while ((await api.node())["heartbeat_at"] or 0.0) < restarted:
                assert agent.poll() is None, tail(tmp_path / "agent.log")
                assert time.monotonic() < deadline, "the agent did not come back"
                await asyncio.sleep(0.1)
            jobs = await settle(api, pid_dir, procs.mark, set(shorts))
            # Stable, not a passing moment: a few more heartbeats change nothing.
            await asyncio.sleep(1.5)
            jobs = await settle(api, pid_dir, procs.mark, set(shorts))
            nodes = (await api.ok("GET", "/v1/nodes"))["nodes"]
            check_allocation(jobs, nodes)
            running = [j for j in jobs if j["state"] == "RUNNING"]
            assert len(running) == RUNNABLE, [(j["id"], j["name"]) for j in running]
            assert all(p["node"] == NODE for j in running for p in j["placement"])
            assert sorted(j["id"] for j in running) == sorted((await api.node())["jobs"])
            states = Counter(j["state"] for j in jobs)
            assert set(states) <= {"PENDING", "RUNNING", "SUCCEEDED"}, states
            # The short jobs all ran to the end, even those that exited while the server was
            # away, and each did run (its task wrote its pid).
            done = [j for j in jobs if j["name"] in shorts]
            assert all(j["state"] == "SUCCEEDED" and j["exit_code"] == 0 for j in done), [
                (j["name"], j["state"], j["reason"]) for j in done if j["state"] != "SUCCEEDED"
            ]
            for j in done:
                assert (pid_dir / f"{j['id']}.{j['attempt']}.0").exists(), j
            reruns = sum(j["attempt"] - 1 for j in done)
            # The jobs that ran across the restart go on, in the same attempt, same process.
            first = {j["id"]: j for j in jobs if j["name"] in firsts}
            assert all(j["state"] == "RUNNING" and j["attempt"] == 1 for j in first.values())
            assert {k for k in before_kill if k[0] in first} == {(i, 1) for i in first}
            now = task_pids(pid_dir, procs.mark)
            assert all(now[k] == before_kill[k] for k in before_kill if k[0] in first)

            # 3. Cancel everything: every process goes, every job ends.
            sem = asyncio.Semaphore(32)

            async def cancel(job_id: int) -> None:
                async with sem:
                    await api.ok("POST", f"/v1/jobs/{job_id}/cancel")

            await asyncio.gather(*(cancel(j["id"]) for j in jobs if j["state"] not in TERMINAL))
            deadline = time.monotonic() + 20
            while task_pids(pid_dir, procs.mark):
                assert time.monotonic() < deadline, task_pids(pid_dir, procs.mark)
                await asyncio.sleep(0.1)
            final = Counter(j["state"] for j in await api.all_jobs())
            assert final == {"CANCELLED": len(jobs) - len(shorts), "SUCCEEDED": len(shorts)}
            assert (await api.node())["allocated"]["cpu_milli"] == 0
            assert agent.poll() is None, tail(tmp_path / "agent.log")

            print(
                f"\n[{backend}] {len(result.answered)} of the burst answered 201 before the kill "
                f"({result.lost} requests died with the server; {len(before_kill)} tasks "
                f"running, {len(first)} of them kept running across the restart); after it "
                f"{len(jobs)} jobs ({unanswered} committed unanswered), {dict(states)}; "
                f"short jobs re-run {reruns} times; all cancelled, no process left"
            )

    asyncio.run(main())


def test_reconciled_spots_disagreement() -> None:
    jobs = [
        {"id": 1, "attempt": 1, "state": "RUNNING"},
        {"id": 2, "attempt": 1, "state": "PENDING"},
    ]
    assert reconciled(jobs, {(1, 1): 10})[0]
    assert not reconciled(jobs, {})[0]
    assert not reconciled(jobs, {(1, 1): 10, (2, 1): 11})[0]
    assert not reconciled(jobs, {(1, 2): 10})[0]


def test_allocation_check_catches_overcommit() -> None:
    nodes = [
        {
            "name": "n",
            "cpu_milli": 1000,
            "memory_mib": 100,
            "gpus": [{"index": 0}],
            "allocated": {"cpu_milli": 0, "memory_mib": 0, "gpu_milli": 0},
        }
    ]

    def job(cpu: int, gpu_milli: int) -> dict[str, Any]:
        res = {"cpu_milli": cpu, "memory_mib": 10, "num_gpu": 1, "gpu_milli": gpu_milli}
        return {
            "state": "RUNNING",
            "tasks": {"count": 1, "resources": res},
            "placement": [{"rank": 0, "node": "n", "gpus": [0]}],
        }

    check_allocation([job(500, 500), job(500, 500)], nodes)
    with pytest.raises(AssertionError):
        check_allocation([job(600, 500), job(500, 500)], nodes)
    with pytest.raises(AssertionError):
        check_allocation([job(100, 600), job(100, 500)], nodes)
