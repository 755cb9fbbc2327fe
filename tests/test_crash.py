"""Crash safety with real processes: ``kill -9`` the server in the middle of a submission burst.

A ``cplat serve`` subprocess and an external ``cplat agent`` subprocess (node ``node-a``); 2,000
concurrent submissions; the server is SIGKILLed once about 600 have been answered 201, then
restarted on the same data dir (and database). Every answered job must have survived, exactly
once; nothing may be over-allocated; the server's RUNNING jobs and the processes the agent really
runs must agree once the agent has reported in; cancelling everything must leave no process
behind.

Every task writes its own pid to ``<pids>/<job>.<attempt>.<rank>`` and carries a marker in its
environment, so the test can tell its processes from anything else on the machine.

GPUs: the machine running the test need not have any, so a second node, ``gpu-a`` with four
fake A100s, is registered over HTTP and driven by :class:`FakeGpuAgent`, an agent inside the
test that speaks the real protocol but only pretends to run its tasks. Every fourth submission of
the burst is a GPU job (one GPU, two GPUs, or half of one), which only ``gpu-a`` can take. Its
tasks, and those of a few GPU jobs submitted before the burst, "run" for a seeded random time,
so GPUs are freed and handed out again before the kill, while the server is dead and after the
restart; two long GPU jobs must keep their GPUs across it all, and a third one that ends after
the restart must end in the attempt and on the GPU it had. The GPU invariants are checked on the
server's placements, on ``gpu-a``'s allocation, and by the fake agent itself on every assignment
it receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
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

# The fake GPU node.
GPU_NODE = "gpu-a"
GPU_MODEL = "A100-SXM4-80GB"
NUM_GPUS = 4
#: Every GPU_EVERY-th submission of the burst is a GPU job, of these shapes in turn:
#: (num_gpu, gpu_milli) = one whole GPU, two whole GPUs, half of one GPU.
GPU_EVERY = 4
GPU_SHAPES = ((1, 1000), (2, 1000), (1, 500))
#: GPU jobs submitted before the burst that never end by themselves: they must keep their GPUs,
#: attempt and placement across the kill and the restart.
LONG_GPU = {"g-0": (1, 1000), "g-1": (1, 500)}
#: A GPU job submitted with them that runs across the kill and the restart too, but ends
#: AFTER_OUTAGE seconds after its agent saw the server again: it must end in the attempt and on
#: the GPU it had before the kill.
ACROSS_GPU = ("g-2", (1, 500))
AFTER_OUTAGE = 0.5
#: GPU jobs submitted before the burst: GPUs are freed and handed out again before the kill.
GPU_SHORTS = 8
#: How long the GPU jobs but those above "run" (seeded, one draw per job name).
GPU_SECONDS = (0.3, 1.5)
#: A GPU job's mCPU and MiB: gpu-a has fewer mCPU than one CPU job asks for, so CPU jobs never
#: go there, and GPU jobs (whose model node-a lacks) never go anywhere else.
GPU_CPU, GPU_MEM = 10, 8
#: Seed of the fake run times of the GPU jobs.
SEED = 1729
#: Environment entries the fake agent reads from an assignment: how long the task "runs"
#: ("inf": until cancelled; "outage": until AFTER_OUTAGE seconds after the fake agent's first
#: outage) and the share of each of its GPUs it holds.
FAKE_SECONDS, FAKE_MILLI = "FAKE_GPU_SECONDS", "FAKE_GPU_MILLI"
#: After the restart the GPU churn goes on until this many GPU tasks were placed on gpu-a and
#: this many ended there; then the fake agent stops ending tasks (those it holds then run until
#: cancelled) and the cluster settles.
CHURN_AFTER_RESTART = 4

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

    async def node(self, name: str = NODE) -> dict[str, Any]:
        return dict(await self.ok("GET", f"/v1/nodes/{name}"))


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


# --- the fake GPU node -----------------------------------------------------------------------


@dataclass
class FakeTask:
    """A task the fake agent was assigned (it runs nothing)."""

    key: tuple[int, int, int]  # job id, attempt, rank
    gpus: tuple[int, ...]
    gpu_milli: int
    ends: float | str  # time.monotonic() when it exits 0 by itself; or "inf", "outage"
    started: float  # wall clock
    ended: float | None = None  # wall clock
    exit_code: int | None = None


class FakeGpuAgent:
    """An agent for node ``gpu-a`` with NUM_GPUS fake GPUs, inside the test.

    It speaks the agent protocol of docs/service.md: registers with the admin token, long-polls
    its assignments, reports each new task ``running`` at once, heartbeats every 0.5 s with
    every task it holds (and every exit not yet acknowledged), and answers a ``cancel`` by
    reporting the task exited with -15. A task ends with exit code 0 after its FAKE_SECONDS,
    unless :attr:`frozen` (then it runs until cancelled). It rides out the server's death
    (connection errors are retried) and registers again when the node answers 404.

    On every assignment it checks the GPUs it is given: the right number, distinct, and with
    what it already holds (less the tasks the server asked it to stop) no GPU shared beyond
    1000 milli. What it finds is kept in :attr:`overcommit`.
    """

    HEARTBEAT = 0.5
    POLL_WAIT = 2

    def __init__(self, url: str, cpu_milli: int) -> None:
        self.url = url
        self.path = f"/v1/nodes/{GPU_NODE}"
        self.headers = {"Authorization": f"Bearer {ADMIN}"}
        self.registration = {
            "name": GPU_NODE,
            "hostname": GPU_NODE,
            "address": "127.0.0.1",
            "cpu_milli": cpu_milli,
            "memory_mib": 1 << 20,
            "gpus": [
                {
                    "index": i,
                    "uuid": f"GPU-fake-{i}",
                    "model": GPU_MODEL,
                    "memory_mib": 81920,
                    "mig_mode": False,
                    "healthy": True,
                }
                for i in range(NUM_GPUS)
            ],
        }
        self.held: dict[tuple[int, int, int], FakeTask] = {}
        self.exits: dict[tuple[int, int, int], dict[str, Any]] = {}  # not acknowledged yet
        self.history: dict[tuple[int, int, int], FakeTask] = {}
        self.cancelled: set[tuple[int, int]] = set()
        self.frozen = False
        self.registrations = 0
        self.unreachable_since: float | None = None  # time.monotonic()
        self.back: float | None = None  # time.monotonic(): first answer after an outage
        self.heartbeats = 0
        #: Check every assignment's GPUs. Off once the test cancels jobs itself: the server
        #: frees a cancelled job's GPUs at once, while its tasks may still be stopping.
        self.check_gpus = True
        self.overcommit: list[str] = []
        self.refused: list[tuple[str, int, Any]] = []
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()

    # Plumbing.
    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.POLL_WAIT + 8)
        conn = aiohttp.TCPConnector(limit=8)
        async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
            self._session = session
            try:
                await self.register()
                await asyncio.gather(self._heartbeats(), self._polls(), self._clock())
            finally:
                for task in list(self._background):
                    task.cancel()
                await asyncio.gather(*self._background, return_exceptions=True)

    async def request(self, method: str, path: str, **kw: Any) -> tuple[int, Any] | None:
        """One request; None when the server did not answer (it is dead or restarting)."""
        assert self._session is not None
        try:
            async with self._session.request(
                method, self.url + path, headers=self.headers, **kw
            ) as r:
                status, body = r.status, await r.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            self.unreachable_since = self.unreachable_since or time.monotonic()
            return None
        if self.unreachable_since is not None:
            # Back after an outage (the server's death; not one lost request).
            if self.back is None and time.monotonic() - self.unreachable_since > 0.5:
                self.back = time.monotonic()
            self.unreachable_since = None
        if status == 404 and path.startswith(self.path):
            await self.register()  # the server does not know this node (any more)
        elif status >= 300:
            self.refused.append((path, status, body))
        return status, body

    async def register(self) -> None:
        async with self._lock:
            while True:
                answer = await self.request("POST", "/v1/nodes", json=self.registration)
                if answer is not None and answer[0] in (200, 201):
                    self.registrations += 1
                    return
                assert answer is None, answer  # refused for good
                await asyncio.sleep(0.1)

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    def _running(key: tuple[int, int, int]) -> dict[str, Any]:
        job_id, attempt, rank = key
        return {"job_id": job_id, "attempt": attempt, "rank": rank, "state": "running"}

    # The loops.
    async def _heartbeats(self) -> None:
        while True:
            carried = dict(self.exits)
            body = {
                "tasks": [self._running(k) for k in self.held] + list(carried.values()),
                "gpus": [{"index": i, "healthy": True} for i in range(NUM_GPUS)],
            }
            answer = await self.request("POST", f"{self.path}/heartbeat", json=body)
            if answer is not None and answer[0] == 200:
                # The answer acknowledges the exits it carried.
                for key in carried:
                    self.exits.pop(key, None)
                self.heartbeats += 1
                self.cancel(answer[1]["cancel"])
            await asyncio.sleep(self.HEARTBEAT)

    async def _polls(self) -> None:
        while True:
            answer = await self.request(
                "GET", f"{self.path}/assignments", params={"wait": str(self.POLL_WAIT)}
            )
            if answer is None or answer[0] != 200:
                await asyncio.sleep(0.1)
                continue
            body = answer[1]
            # Cancels first: a GPU the server took back from a task it asked to stop may be
            # in an assignment of the same answer.
            news = self.cancel(body["cancel"])
            for item in body["assignments"]:
                news |= self.start(item)
            if not news:
                # The poll answers at once until our reports arrive: do not spin on it.
                await asyncio.sleep(0.05)

    async def _clock(self) -> None:
        while True:
            if not self.frozen:
                now = time.monotonic()
                for key, task in list(self.held.items()):
                    if task.ends == "outage" and self.back is not None:
                        task.ends = self.back + AFTER_OUTAGE
                    if isinstance(task.ends, float) and task.ends <= now:
                        self.exit(key, 0, None)
            await asyncio.sleep(0.02)

    # Tasks.
    def start(self, item: dict[str, Any]) -> bool:
        key = (int(item["job_id"]), int(item["attempt"]), int(item["rank"]))
        if key in self.held or key in self.history:
            return False  # handed out again until our report arrives
        env = item["env"]
        milli, seconds = int(env[FAKE_MILLI]), env[FAKE_SECONDS]
        gpus = tuple(int(g) for g in item["gpus"])
        ends = seconds if seconds in ("inf", "outage") else time.monotonic() + float(seconds)
        task = FakeTask(key, gpus, milli, ends, time.time())
        self.history[key] = task
        if key[:2] in self.cancelled:
            self.exit(key, -signal.SIGTERM, "cancelled before start", task)
            return True
        wrong = self.misfit(gpus, milli) if self.check_gpus else []
        if wrong:
            held = {k: (t.gpus, t.gpu_milli) for k, t in self.held.items()}
            self.overcommit.append(f"task {key}: {'; '.join(wrong)} (holding {held})")
        self.held[key] = task
        self._spawn(self.request("POST", f"{self.path}/tasks", json=self._running(key)))
        return True

    def misfit(self, gpus: tuple[int, ...], milli: int) -> list[str]:
        """What is wrong with giving a new task ``milli`` of each of ``gpus``, next to the
        tasks held (but for those the server asked to stop)."""
        used: Counter[int] = Counter()
        for other in self.held.values():
            if other.key[:2] not in self.cancelled:
                for g in other.gpus:
                    used[g] += other.gpu_milli
        wrong = []
        if not gpus or len(set(gpus)) != len(gpus) or (milli < 1000 and len(gpus) != 1):
            wrong.append(f"GPUs {list(gpus)} for a {milli}-milli task")
        for g in gpus:
            if not 0 <= g < NUM_GPUS or used[g] + milli > 1000:
                wrong.append(f"GPU {g}: {used[g]} + {milli} milli")
        return wrong

    def exit(
        self, key: tuple[int, int, int], code: int, reason: str | None, task: FakeTask | None = None
    ) -> None:
        task = self.held.pop(key, None) or task
        assert task is not None
        task.ended, task.exit_code = time.time(), code
        job_id, attempt, rank = key
        report = {"job_id": job_id, "attempt": attempt, "rank": rank, "state": "exited"}
        report |= {"exit_code": code, "reason": reason} if reason else {"exit_code": code}
        self.exits[key] = report
        self._spawn(self._report_exit(key, report))

    async def _report_exit(self, key: tuple[int, int, int], report: dict[str, Any]) -> None:
        answer = await self.request("POST", f"{self.path}/tasks", json=report)
        if answer is not None and answer[0] < 300:
            self.exits.pop(key, None)  # taken; else the heartbeats carry it until it is

    def cancel(self, items: list[dict[str, Any]]) -> bool:
        news = False
        for item in items:
            job_attempt = (int(item["job_id"]), int(item["attempt"]))
            self.cancelled.add(job_attempt)
            for key in [k for k in self.held if k[:2] == job_attempt]:
                self.exit(key, -signal.SIGTERM, "cancelled")
                news = True
        return news

    # Views.
    def running(self) -> dict[tuple[int, int], tuple[int, ...]]:
        """(job id, attempt) -> GPUs of every task held (the GPU jobs have one task)."""
        return {k[:2]: t.gpus for k, t in self.held.items()}

    def tasks(self, job_id: int) -> list[FakeTask]:
        return [t for k, t in self.history.items() if k[0] == job_id]


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
            # A task's whole GPUs are distinct; a share sits on one GPU.
            assert len(set(p["gpus"])) == len(p["gpus"]), job
            assert res["gpu_milli"] == 1000 or len(p["gpus"]) == 1, job
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


def on_node(job: dict[str, Any], name: str) -> bool:
    return any(p["node"] == name for p in job["placement"] or [])


def check_gpu_node(jobs: list[dict[str, Any]], node: dict[str, Any]) -> dict[int, int]:
    """gpu-a's allocation is exactly what the placements on it add up to (once settled).

    Returns the milli-GPU placed on each of its GPUs.
    """
    placed = [j for j in jobs if j["state"] in PLACED and on_node(j, node["name"])]
    per_gpu: Counter[int] = Counter({i: 0 for i in range(len(node["gpus"]))})
    cpu = 0
    for j in placed:
        res = j["tasks"]["resources"]
        for p in j["placement"]:
            cpu += res["cpu_milli"]
            for g in p["gpus"]:
                per_gpu[g] += res["gpu_milli"]
    assert all(0 <= used <= 1000 for used in per_gpu.values()), per_gpu
    assert node["allocated"]["gpu_milli"] == sum(per_gpu.values()), (node, dict(per_gpu))
    assert node["allocated"]["cpu_milli"] == cpu, (node, cpu)
    assert sorted(node["jobs"]) == sorted(j["id"] for j in placed), node
    return dict(per_gpu)


def reconciled(
    jobs: list[dict[str, Any]], live: dict[tuple[int, int], int], node: str = NODE
) -> tuple[bool, str]:
    """Server RUNNING on ``node`` == task processes alive; nothing runs for another state."""
    placed = {
        (j["id"], j["attempt"]): j["state"]
        for j in jobs
        if j["state"] in PLACED and on_node(j, node)
    }
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


def gpu_reconciled(jobs: list[dict[str, Any]], gpu: FakeGpuAgent) -> tuple[bool, str]:
    """Server RUNNING on gpu-a == what the fake agent holds, on the same GPUs; every exit the
    fake agent saw was taken."""
    placed = [j for j in jobs if j["state"] in PLACED and on_node(j, GPU_NODE)]
    running = {(j["id"], j["attempt"]): tuple(j["placement"][0]["gpus"]) for j in placed}
    scheduled = [(j["id"], j["attempt"]) for j in placed if j["state"] == "SCHEDULED"]
    held = gpu.running()
    why = []
    if set(held) - set(running):
        stray = sorted(set(held) - set(running))[:10]
        why.append(f"gpu-a holds tasks the server does not consider RUNNING: {stray}")
    if set(running) - set(held):
        why.append(f"RUNNING on gpu-a but not held: {sorted(set(running) - set(held))[:10]}")
    moved = {k: (g, held[k]) for k, g in running.items() if k in held and held[k] != g}
    if moved:
        why.append(f"placement and the fake agent's GPUs differ: {moved}")
    if scheduled:
        why.append(f"still SCHEDULED on gpu-a: {sorted(scheduled)[:10]}")
    if gpu.exits:
        why.append(f"exits not acknowledged: {sorted(gpu.exits)[:10]}")
    return not why, "; ".join(why)


async def settle(
    api: Api,
    pid_dir: Path,
    mark: str,
    finite: set[str],
    gpu: FakeGpuAgent,
    check_agents: Any,
    timeout: float = 20,
) -> list[dict[str, Any]]:
    """Wait until the jobs named ``finite`` ended and the server's view agrees with the real
    processes of node-a and with what the fake agent holds on gpu-a (or fail saying how not)."""
    deadline = time.monotonic() + timeout
    while True:
        check_agents()
        jobs = await api.all_jobs()
        ok, why = reconciled(jobs, task_pids(pid_dir, mark))
        gpu_ok, gpu_why = gpu_reconciled(jobs, gpu)
        if not gpu_ok:
            ok, why = False, f"{why}; {gpu_why}"
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
        # The tasks write their pids into the test's (private) temporary dir.
        "--task-user",
        "self",
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

    def gpu_body(name: str, shape: tuple[int, int], seconds: str) -> dict[str, Any]:
        num, milli = shape
        resources = {"cpu_milli": GPU_CPU, "memory_mib": GPU_MEM, "num_gpu": num}
        return {
            "name": name,
            "command": "exit 99",  # never run: gpu-a's agent only pretends
            "env": {FAKE_SECONDS: seconds, FAKE_MILLI: str(milli)},
            "tasks": {
                "count": 1,
                "resources": {**resources, "gpu_milli": milli, "gpu_models": ["A100"]},
            },
            "max_runtime": 600,
        }

    def seconds(name: str, span: tuple[float, float]) -> str:
        return f"{random.Random(f'{SEED}/{name}').uniform(*span):.2f}"

    def burst_body(name: str, cpu: int) -> dict[str, Any]:
        i = int(name.split("-")[1])
        if i % GPU_EVERY != GPU_EVERY - 1:
            return body(name, cpu)
        shape = GPU_SHAPES[(i // GPU_EVERY) % len(GPU_SHAPES)]
        return gpu_body(name, shape, seconds(name, GPU_SECONDS))

    def is_gpu(name: str) -> bool:
        return (
            name in LONG_GPU
            or name == ACROSS_GPU[0]
            or name.startswith("gs-")
            or (name.startswith("c-") and int(name[2:]) % GPU_EVERY == GPU_EVERY - 1)
        )

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
            # gpu-a can take every GPU task at once (all halves: 2 per GPU), but no CPU job.
            assert 2 * NUM_GPUS * GPU_CPU <= cpu - 1, cpu
            gpu = FakeGpuAgent(url, cpu_milli=cpu - 1)
            gpu_task = asyncio.create_task(gpu.run(), name="fake gpu agent")
            try:
                await scenario(api, server, agent, cpu, gpu, gpu_task)
            finally:
                gpu_task.cancel()
                await asyncio.gather(gpu_task, return_exceptions=True)

    async def scenario(
        api: Api,
        server: subprocess.Popen[bytes],
        agent: subprocess.Popen[bytes],
        cpu: int,
        gpu: FakeGpuAgent,
        gpu_task: asyncio.Task[None],
    ) -> None:
        def check_agents() -> None:
            assert agent.poll() is None, tail(tmp_path / "agent.log")
            if gpu_task.done():
                gpu_task.result()  # raises what ended it
                raise AssertionError("the fake GPU agent stopped")

        deadline = time.monotonic() + 15
        while (await api.call("GET", f"/v1/nodes/{GPU_NODE}"))[0] != 200:
            check_agents()
            assert time.monotonic() < deadline, "the fake GPU agent did not register"
            await asyncio.sleep(0.05)
        gpu_node = await api.node(GPU_NODE)
        assert [g["model"] for g in gpu_node["gpus"]] == [GPU_MODEL] * NUM_GPUS, gpu_node
        assert gpu_node["allocated"] == {"cpu_milli": 0, "memory_mib": 0, "gpu_milli": 0}

        # A few long jobs that run across the kill and the restart; short high-priority
        # jobs in the other slots, so that tasks start, exit and get replaced while the
        # server dies and while it is away; then the burst of long ones.
        firsts = [f"l-{i}" for i in range(RUNNABLE // 2)]
        shorts = [f"s-{i:03d}" for i in range(SHORT_JOBS)]
        answered: dict[str, int] = {}
        for name in firsts:
            job = await api.ok("POST", "/v1/jobs", json=body(name, cpu))
            answered[name] = int(job["id"])
        # The long GPU jobs too, which must keep their GPUs across it all.
        for name, shape in LONG_GPU.items():
            job = await api.ok("POST", "/v1/jobs", json=gpu_body(name, shape, "inf"))
            answered[name] = int(job["id"])
        job = await api.ok("POST", "/v1/jobs", json=gpu_body(*ACROSS_GPU, "outage"))
        answered[ACROSS_GPU[0]] = across_id = int(job["id"])
        long_ids = sorted([across_id, *(answered[n] for n in LONG_GPU)])
        deadline = time.monotonic() + 15
        while True:
            check_agents()
            long_jobs = [await api.ok("GET", f"/v1/jobs/{i}") for i in long_ids]
            if (
                len(task_pids(pid_dir, procs.mark)) == len(firsts)
                and all(j["state"] == "RUNNING" for j in long_jobs)
                and {(i, 1) for i in long_ids} <= set(gpu.running())
            ):
                break
            assert time.monotonic() < deadline, ("the first jobs did not start", long_jobs)
            await asyncio.sleep(0.05)
        long_placed = {j["id"]: j["placement"] for j in long_jobs}
        # Short GPU jobs, until GPUs have been freed and handed out again a few times.
        gpu_shorts = [f"gs-{i:02d}" for i in range(GPU_SHORTS)]
        for i, name in enumerate(gpu_shorts):
            shape = GPU_SHAPES[i % len(GPU_SHAPES)]
            job = await api.ok(
                "POST", "/v1/jobs", json=gpu_body(name, shape, seconds(name, GPU_SECONDS))
            )
            answered[name] = int(job["id"])
        deadline = time.monotonic() + 15
        while sum(1 for t in gpu.history.values() if t.exit_code == 0) < 3:
            check_agents()
            assert time.monotonic() < deadline, "the short GPU jobs did not churn"
            await asyncio.sleep(0.05)
        for name in shorts:
            job = await api.ok("POST", "/v1/jobs", json=body(name, cpu))
            answered[name] = int(job["id"])
        names = [f"c-{i:04d}" for i in range(SUBMISSIONS)]
        result = await burst(api, server, lambda name: burst_body(name, cpu), names)
        answered.update(result.answered)
        server.wait(timeout=10)
        killed = result.killed_at
        assert server.returncode == -signal.SIGKILL, server.returncode
        assert len(result.answered) >= KILL_AFTER, (result, tail(tmp_path / "server-1.log"))
        assert not result.refused, result.refused[:10]
        before_kill = task_pids(pid_dir, procs.mark)

        # The agents must outlive the server on their own; their tasks go on meanwhile.
        await asyncio.sleep(1.0)
        check_agents()
        restarted = time.time()
        procs.spawn("server-2", serve)
        try:
            await api.healthy()
        except AssertionError:
            raise AssertionError(tail(tmp_path / "server-2.log")) from None
        up = time.time()

        jobs = await api.all_jobs()
        nodes = (await api.ok("GET", "/v1/nodes"))["nodes"]
        check_allocation(jobs, nodes)

        # 1. Every answered job exists, once, under the name it was submitted with.
        ids = [j["id"] for j in jobs]
        assert len(ids) == len(set(ids)), "duplicate job ids"
        by_name = Counter(j["name"] for j in jobs)
        dup = [n for n, c in by_name.items() if c > 1]
        assert not dup, f"jobs stored twice: {dup[:10]}"
        known = {*firsts, *LONG_GPU, ACROSS_GPU[0], *gpu_shorts, *shorts, *names}
        assert set(by_name) <= known, set(by_name) - known
        stored = {j["name"]: j["id"] for j in jobs}
        missing = {n: i for n, i in answered.items() if stored.get(n) != i}
        assert not missing, f"{len(missing)} answered jobs lost or renumbered: {missing}"
        # At most the requests in flight at the kill were committed without an answer.
        unanswered = len(jobs) - len(answered)
        assert 0 <= unanswered <= CONCURRENCY, (len(jobs), len(answered))
        # The long GPU jobs were restored onto their GPUs.
        restored = {j["id"]: j for j in jobs if j["id"] in long_placed}
        assert {i: j["placement"] for i, j in restored.items()} == long_placed, restored

        # 2. The agents reconnect on their own. GPU tasks go on being placed and ending on
        # gpu-a for a while, then the fake agent stops ending them, and reality and the
        # server agree.
        deadline = time.monotonic() + 15
        for name in (NODE, GPU_NODE):
            while ((await api.node(name))["heartbeat_at"] or 0.0) < restarted:
                check_agents()
                assert time.monotonic() < deadline, f"the agent of {name} did not come back"
                await asyncio.sleep(0.1)
        deadline = time.monotonic() + 20
        while True:
            check_agents()
            started = [t for t in gpu.history.values() if t.started >= up]
            ended = [t for t in gpu.history.values() if (t.ended or 0.0) >= up]
            across_tasks = gpu.tasks(across_id)
            assert len(across_tasks) == 1, across_tasks
            if min(len(started), len(ended)) >= CHURN_AFTER_RESTART and across_tasks[0].ended:
                break
            # No over-allocation at any moment of the churn either.
            check_allocation(await api.all_jobs(), (await api.ok("GET", "/v1/nodes"))["nodes"])
            assert time.monotonic() < deadline, (
                f"GPU tasks did not churn after the restart: {len(started)} placed, "
                f"{len(ended)} ended; {ACROSS_GPU[0]} ended: {across_tasks[0].ended}"
            )
            await asyncio.sleep(0.2)
        gpu.frozen = True

        jobs = await settle(api, pid_dir, procs.mark, set(shorts), gpu, check_agents)
        # Stable, not a passing moment: a few more heartbeats change nothing.
        await asyncio.sleep(1.5)
        jobs = await settle(api, pid_dir, procs.mark, set(shorts), gpu, check_agents)
        nodes = (await api.ok("GET", "/v1/nodes"))["nodes"]
        check_allocation(jobs, nodes)
        per_gpu = check_gpu_node(jobs, next(n for n in nodes if n["name"] == GPU_NODE))
        running = [j for j in jobs if j["state"] == "RUNNING" and on_node(j, NODE)]
        assert len(running) == RUNNABLE, [(j["id"], j["name"]) for j in running]
        assert all(p["node"] == NODE for j in running for p in j["placement"])
        assert sorted(j["id"] for j in running) == sorted((await api.node())["jobs"])
        states = Counter(j["state"] for j in jobs)
        assert set(states) <= {"PENDING", "RUNNING", "SUCCEEDED"}, states
        # Every job ran on the node made for it.
        for j in jobs:
            if j["state"] in PLACED:
                assert on_node(j, GPU_NODE if is_gpu(j["name"]) else NODE), j
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

        # The GPU jobs: no GPU was ever handed out twice (the fake agent checked every
        # assignment against what it held); the long ones kept their GPUs and their one
        # task, and the one that ended after the restart ended there, in its first attempt;
        # every task that ended by itself ended its job, in that attempt.
        assert not gpu.overcommit, gpu.overcommit[:10]
        assert not gpu.refused, gpu.refused[:10]
        by_id = {j["id"]: j for j in jobs}
        for i, placement in long_placed.items():
            j = by_id[i]
            state = "SUCCEEDED" if i == across_id else "RUNNING"
            assert (j["state"], j["attempt"], j["placement"]) == (state, 1, placement), j
            (task,) = gpu.tasks(i)
            assert list(task.gpus) == placement[0]["gpus"], (task, j)
            # Placed before the kill; ended, if at all, once the new server was there.
            assert task.started < killed and (task.ended or restarted) >= restarted, (task, j)
            assert (task.key in gpu.held) == (i != across_id), (task, j)
        gpu_jobs = [j for j in jobs if is_gpu(j["name"])]
        assert all(j["attempt"] <= 1 for j in gpu_jobs), [
            (j["id"], j["attempt"]) for j in gpu_jobs if j["attempt"] > 1
        ]
        for task in gpu.history.values():
            j = by_id[task.key[0]]
            if task.exit_code == 0:
                assert (j["state"], j["attempt"], j["exit_code"]) == ("SUCCEEDED", 1, 0), j
            else:
                assert task.exit_code is None and j["state"] == "RUNNING", (task, j)
        succeeded = [j for j in gpu_jobs if j["state"] == "SUCCEEDED"]
        assert len(succeeded) == sum(1 for t in gpu.history.values() if t.exit_code == 0)
        placed_before = [t for t in gpu.history.values() if t.started < killed]
        ended_before = [t for t in placed_before if t.ended is not None and t.ended < killed]
        at_kill = [t for t in placed_before if t.ended is None or t.ended > killed]
        while_down = [t for t in at_kill if t.ended is not None and t.ended < up]
        across = [t for t in at_kill if t.ended is None or t.ended >= up]
        placed_after = [t for t in gpu.history.values() if t.started >= up]
        burst_before = sum(1 for t in placed_before if by_id[t.key[0]]["name"].startswith("c-"))
        assert len(ended_before) >= 3, "no GPU churn before the kill"

        # 3. Cancel everything: every process goes, every job ends, every GPU is free.
        sem = asyncio.Semaphore(32)

        async def cancel(job_id: int) -> None:
            async with sem:
                await api.ok("POST", f"/v1/jobs/{job_id}/cancel")

        held = set(gpu.held)
        gpu.check_gpus = False
        cancelled_at = time.time()
        await asyncio.gather(*(cancel(j["id"]) for j in jobs if j["state"] not in TERMINAL))
        # Quiet for a while: a poll answered before the last cancels may still bring gpu-a an
        # assignment, which the next answer cancels.
        deadline, quiet = time.monotonic() + 20, time.monotonic() + 1.0
        while time.monotonic() < quiet:
            check_agents()
            if task_pids(pid_dir, procs.mark) or gpu.held or gpu.exits:
                quiet = time.monotonic() + 1.0
            assert time.monotonic() < deadline, (task_pids(pid_dir, procs.mark), gpu.running())
            await asyncio.sleep(0.1)
        final = Counter(j["state"] for j in await api.all_jobs())
        n_done = states["SUCCEEDED"]
        assert final == {"CANCELLED": len(jobs) - n_done, "SUCCEEDED": n_done}, final
        assert (await api.node())["allocated"]["cpu_milli"] == 0
        gpu_node = await api.node(GPU_NODE)
        assert gpu_node["allocated"] == {"cpu_milli": 0, "memory_mib": 0, "gpu_milli": 0}
        assert gpu_node["jobs"] == [], gpu_node
        # What gpu-a held was stopped; so were the GPU jobs placed while the cancels came in.
        assert all(gpu.history[k].exit_code == -signal.SIGTERM for k in held)
        odd = [t for t in gpu.history.values() if t.exit_code not in (0, -signal.SIGTERM)]
        assert not odd, odd
        late = sum(1 for t in gpu.history.values() if t.started >= cancelled_at)
        check_agents()

        print(
            f"\n[{backend}] {len(result.answered)} of the burst answered 201 before the kill "
            f"({result.lost} requests died with the server; {len(before_kill)} tasks "
            f"running, {len(first)} of them kept running across the restart); after it "
            f"{len(jobs)} jobs ({unanswered} committed unanswered), {dict(states)}; "
            f"short jobs re-run {reruns} times; all cancelled, no process left"
            f"\n[{backend}] gpu-a: {len(gpu_jobs)} GPU jobs stored; GPU tasks placed before "
            f"the kill {len(placed_before)} ({burst_before} of the burst), ended before it "
            f"{len(ended_before)}, running at it {len(at_kill)} ({len(while_down)} ended while "
            f"the server was down, {len(across)} ran across the restart, the "
            f"{len(long_placed)} long ones among them), placed after the restart "
            f"{len(placed_after)}; "
            f"{len(succeeded)} GPU jobs succeeded; {len(held)} tasks held once settled, milli "
            f"per GPU {per_gpu}; {late} placed while cancelling; {gpu.heartbeats} heartbeats, "
            f"{gpu.registrations} registrations"
        )

    asyncio.run(main())


def test_reconciled_spots_disagreement() -> None:
    on_a = [{"rank": 0, "node": NODE, "gpus": []}]
    jobs = [
        {"id": 1, "attempt": 1, "state": "RUNNING", "placement": on_a},
        {"id": 2, "attempt": 1, "state": "PENDING", "placement": []},
        {"id": 3, "attempt": 1, "state": "RUNNING", "placement": [{**on_a[0], "node": "b"}]},
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


def test_gpu_checks_catch_misplacement() -> None:
    gpus = [{"index": i, "model": GPU_MODEL} for i in range(2)]
    node = {
        "name": GPU_NODE,
        "cpu_milli": 1000,
        "memory_mib": 100,
        "gpus": gpus,
        "allocated": {"cpu_milli": 20, "memory_mib": 20, "gpu_milli": 1500},
        "jobs": [1, 2],
    }

    def job(job_id: int, on: list[int], gpu_milli: int, state: str = "RUNNING") -> dict[str, Any]:
        res = {"cpu_milli": 10, "memory_mib": 10, "num_gpu": len(on), "gpu_milli": gpu_milli}
        return {
            "id": job_id,
            "attempt": 1,
            "state": state,
            "tasks": {"count": 1, "resources": res},
            "placement": [{"rank": 0, "node": GPU_NODE, "gpus": on}],
        }

    good = [job(1, [0], 1000), job(2, [1], 500), job(3, [1], 500, "SUCCEEDED")]
    check_allocation(good, [node])
    assert check_gpu_node(good, node) == {0: 1000, 1: 500}
    with pytest.raises(AssertionError):  # one GPU twice for a two-GPU job
        check_allocation([job(1, [1, 1], 500)], [node])
    with pytest.raises(AssertionError):  # a share on two GPUs
        check_allocation([job(1, [0, 1], 500)], [node])
    with pytest.raises(AssertionError):  # the node's allocation disagrees with placements
        check_gpu_node([*good, job(4, [1], 500)], node)
    with pytest.raises(AssertionError):
        check_gpu_node(good, {**node, "jobs": [1]})

    agent = FakeGpuAgent("http://127.0.0.1:9", cpu_milli=100)
    assert agent.misfit((0, 1), 1000) == []
    for key, on, milli in [((1, 1, 0), (0,), 1000), ((2, 1, 0), (1,), 500)]:
        agent.held[key] = FakeTask(key, on, milli, "inf", 0.0)
    assert gpu_reconciled(good, agent) == (True, "")
    assert agent.misfit((1,), 500) == []
    assert agent.misfit((1,), 600) and agent.misfit((0,), 500) and agent.misfit((3, 4), 1000)
    assert agent.misfit((2, 2), 1000) and agent.misfit((2, 3), 500)
    agent.cancelled.add((1, 1))  # asked to stop: its GPU may go to another task
    assert agent.misfit((0,), 1000) == []
    agent.held[(2, 1, 0)].gpus = (0,)
    assert not gpu_reconciled(good, agent)[0]  # held on another GPU than placed
    del agent.held[(2, 1, 0)]
    assert not gpu_reconciled(good, agent)[0]  # RUNNING but not held


def test_fake_gpu_agent_protocol() -> None:
    """The fake agent registers again on a 404, reports a task running and, cancelled, exited
    with -15, and repeats that exit in its heartbeats until one is answered."""
    from aiohttp import web

    seen: dict[str, list[Any]] = {"register": [], "heartbeat": [], "tasks": []}
    state = {"known": False}
    assignment = {"job_id": 7, "attempt": 1, "rank": 0, "gpus": [2]}
    assignment["env"] = {FAKE_SECONDS: "inf", FAKE_MILLI: "500"}

    async def register(request: web.Request) -> web.Response:
        seen["register"].append(await request.json())
        state["known"] = True
        return web.json_response({}, status=201)

    async def heartbeat(request: web.Request) -> web.Response:
        if not state["known"]:
            return web.json_response({}, status=404)
        body = await request.json()
        seen["heartbeat"].append(body["tasks"])
        running = any(t["state"] == "running" for t in body["tasks"])
        return web.json_response({"cancel": [{"job_id": 7, "attempt": 1}] if running else []})

    async def tasks(request: web.Request) -> web.Response:
        body = await request.json()
        seen["tasks"].append(body)
        # Exits are refused here: only a heartbeat takes them.
        return web.json_response({}, status=503 if body["state"] == "exited" else 200)

    async def assignments(request: web.Request) -> web.Response:
        await asyncio.sleep(0.05)
        return web.json_response({"assignments": [assignment], "cancel": []})

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/nodes", register)
        app.router.add_post(f"/v1/nodes/{GPU_NODE}/heartbeat", heartbeat)
        app.router.add_post(f"/v1/nodes/{GPU_NODE}/tasks", tasks)
        app.router.add_get(f"/v1/nodes/{GPU_NODE}/assignments", assignments)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        agent = FakeGpuAgent(f"http://127.0.0.1:{port}", cpu_milli=100)
        agent.HEARTBEAT = 0.05
        run = asyncio.create_task(agent.run())
        try:
            deadline = time.monotonic() + 10
            while not seen["register"]:
                await asyncio.sleep(0.01)
            state["known"] = False  # the server forgot the node: the next heartbeat is a 404
            while len(seen["register"]) < 2 or (7, 1, 0) not in agent.history:
                assert time.monotonic() < deadline, seen
                await asyncio.sleep(0.01)
            while agent.held or agent.exits:  # running, then cancelled, then acknowledged
                assert not run.done() and time.monotonic() < deadline, (seen, agent.exits)
                await asyncio.sleep(0.01)
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            await runner.cleanup()
        assert seen["register"][1]["gpus"][3]["model"] == GPU_MODEL
        running = {"job_id": 7, "attempt": 1, "rank": 0, "state": "running"}
        stopped = {**running, "state": "exited", "exit_code": -15, "reason": "cancelled"}
        assert running in seen["tasks"] and stopped in seen["tasks"], seen["tasks"]
        assert [running] in seen["heartbeat"] and [stopped] in seen["heartbeat"], seen["heartbeat"]
        assert agent.history[(7, 1, 0)].exit_code == -15 and not agent.overcommit
        assert len(agent.history) == 1  # the assignment handed out again is not a new task

    asyncio.run(main())
