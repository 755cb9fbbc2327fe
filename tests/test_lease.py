"""At most one running copy of a task: node leases, the lease watchdog and the tether.

- A real server (in-process) and a real ``cplat agent`` subprocess that reaches the server
  only through a TCP proxy inside the test. Stopping the proxy partitions the agent: it cannot
  renew its lease, stops its task (which ignores SIGTERM, so only the SIGKILL after the grace
  ends it), and the server requeues the job onto a second node only ``lease + grace`` after
  the last renewal. Every task process prints wall-clock ticks tagged with its attempt; the
  last tick of attempt 1 must come before the requeue and before the first tick of attempt 2.
- The server alone: a node that falls silent is marked down after ``node_timeout`` but its
  job is requeued no earlier than ``lease + grace`` after its last heartbeat.
- An agent killed with SIGKILL cannot stop anything; its tether does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("aiohttp")

from cplat.testing.service import ADMIN, SECRET, Service, running_service, token  # noqa: E402
from cplat_server.keys import CONTROLLER  # noqa: E402

PY = sys.executable
MEMBER = token("ana", "vision", "member")
MARK_VAR = "CPLAT_LEASE_TEST_MARK"

# A task that ignores SIGTERM (so only a SIGKILL ends it), forks a child that does the same,
# and has both print "<attempt> <who> <wall clock>" every 50 ms.
TICKER = r"""
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
attempt = os.environ["CPLAT_ATTEMPT"]
who = "child" if os.fork() == 0 else "leader"
while True:
    print(attempt, who, repr(time.time()), flush=True)
    time.sleep(0.05)
"""


def run(coro: Any) -> Any:
    return asyncio.run(coro)


class Proxy:
    """A TCP proxy to ``127.0.0.1:target`` that can be cut (and restored on the same port)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Refuse new connections and reset every open one."""
        assert self._server is not None
        self._server.close()
        for w in list(self._links):
            w.transport.abort()
        self._links.clear()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        self._links |= {writer, up_w}

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                w.transport.abort()
                self._links.discard(w)

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))


@contextlib.contextmanager
def agent_process(
    server: str, name: str, work: Path, log: Path, heartbeat: float = 0.5
) -> Iterator[subprocess.Popen[bytes]]:
    """A ``cplat agent`` subprocess, ended (and its leftovers with it) on the way out."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CPLAT_JWT_SECRET": SECRET}
    argv = [PY, "-m", "cplat.cli", "agent", "--server", server, "--token", ADMIN]
    argv += ["--name", name, "--work-dir", str(work), "--heartbeat", str(heartbeat)]
    # Tasks as the test's own user: the test reads their /proc entries and their output,
    # and task users could not reach this interpreter (tests/test_isolation.py covers those).
    argv += ["--task-user", "self"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def marked_processes(mark: str) -> dict[int, str]:
    """pid -> CPLAT_ATTEMPT of every live (not zombie) process carrying ``mark``."""
    out: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        except (OSError, IndexError):
            continue
        if state not in (b"Z", b"X") and env.get(MARK_VAR.encode()) == mark.encode():
            out[int(entry)] = env.get(b"CPLAT_ATTEMPT", b"?").decode()
    return out


async def wait_for(what: str, check: Any, timeout: float, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(every)


async def node(svc: Service, name: str) -> dict[str, Any]:
    status, body = await svc.call("GET", f"/v1/nodes/{name}", ADMIN)
    assert status == 200, body
    return dict(body)


async def ticks(svc: Service, job_id: int) -> dict[tuple[str, str], list[float]]:
    """(attempt, who) -> the wall-clock ticks its task process printed, in order."""
    out: dict[tuple[str, str], list[float]] = {}
    after = None
    while True:
        query = "" if after is None else f"?after={after}"
        status, page = await svc.call("GET", f"/v1/jobs/{job_id}/logs{query}", MEMBER)
        assert status == 200, page
        for chunk in page["logs"]:
            for line in chunk["data"].splitlines():
                parts = line.split()
                if len(parts) == 3:
                    out.setdefault((parts[0], parts[1]), []).append(float(parts[2]))
        if not page["logs"]:
            return out
        after = page["next"]


@contextlib.asynccontextmanager
async def proxied(svc: Service) -> AsyncIterator[Proxy]:
    proxy = Proxy(int(svc.url.rsplit(":", 1)[1]))
    await proxy.start()
    try:
        yield proxy
    finally:
        with contextlib.suppress(Exception):
            await proxy.cut()


def test_partitioned_agent_stops_its_task_before_the_job_runs_elsewhere(tmp_path: Path) -> None:
    lease, grace = 3.0, 1.5
    mark = uuid.uuid4().hex

    async def main() -> None:
        async with (
            running_service(tmp_path, lease=lease, grace=grace, node_timeout=30.0) as svc,
            proxied(svc) as proxy,
        ):
            url = f"http://127.0.0.1:{proxy.port}"
            log = tmp_path / "agent-a.log"
            with agent_process(url, "node-a", tmp_path / "agent-a", log) as agent:
                await wait_for(
                    "node-a to register",
                    lambda: _status_ok(svc, "/v1/nodes/node-a"),
                    timeout=20,
                )
                job = await svc.submit(
                    MEMBER,
                    name="ticker",
                    command=[PY, "-c", TICKER],
                    env={MARK_VAR: mark},
                    tasks={"resources": {"cpu_milli": 100, "memory_mib": 64}},
                )
                running = await svc.wait(job["id"], MEMBER, {"RUNNING"}, timeout=20)
                assert running["placement"][0]["node"] == "node-a"
                # A second node for the requeued attempt; its agent stops tasks quickly.
                await svc.start_agent("node-b", tmp_path / "agent-b", stop_grace=0.5)
                await wait_for(
                    "attempt 1 to run (leader and child)",
                    lambda: _as_future(len(marked_processes(mark)) == 2),
                    timeout=10,
                )

                await proxy.cut()  # the partition: node-a cannot renew its lease
                cut_at = time.time()
                requeued = await wait_for(
                    "the requeue",
                    lambda: _requeue_event(svc, job["id"]),
                    timeout=lease + grace + 10,
                )
                # Checked at once: no process of attempt 1 may be left when the server requeues.
                assert "1" not in marked_processes(mark).values()
                last_renewal = (await node(svc, "node-a"))["heartbeat_at"]
                assert requeued["at"] - last_renewal >= lease + grace, (requeued, last_renewal)
                assert requeued["at"] - cut_at < lease + grace + 2.5
                assert agent.poll() is None, "the partitioned agent must keep running"

                again = await svc.wait(job["id"], MEMBER, {"RUNNING"}, timeout=20)
                assert again["attempt"] == 2 and again["placement"][0]["node"] == "node-b"
                await wait_for(
                    "attempt 2 to tick",
                    lambda: _has_ticks(svc, job["id"], "2"),
                    timeout=10,
                )

                # The partition heals: node-a renews, ships attempt 1's output, and takes
                # tasks again (node-b is cordoned, so the next job can only go there).
                await proxy.start()
                await wait_for(
                    "node-a to heartbeat again",
                    lambda: _heartbeat_after(svc, "node-a", requeued["at"]),
                    timeout=20,
                )
                await wait_for(
                    "attempt 1's output", lambda: _has_ticks(svc, job["id"], "1"), timeout=20
                )
                status, _ = await svc.call("POST", "/v1/nodes/node-b/cordon", ADMIN)
                assert status == 200
                after = await svc.submit(
                    MEMBER,
                    name="after",
                    command=["true"],
                    tasks={"resources": {"cpu_milli": 100, "memory_mib": 64}},
                )
                done = await svc.wait(after["id"], MEMBER, timeout=20)
                assert done["state"] == "SUCCEEDED" and done["placement"][0]["node"] == "node-a"

                status, _ = await svc.call("POST", f"/v1/jobs/{job['id']}/cancel", MEMBER)
                assert status == 200
                await wait_for(
                    "attempt 2 to end",
                    lambda: _as_future(not marked_processes(mark)),
                    timeout=10,
                )
                got = await ticks(svc, job["id"])
            text = log.read_text(errors="replace")
            assert "lease lost" in text, text[-3000:]

        first = [t for (a, _), ts in got.items() if a == "1" for t in ts]
        second = [t for (a, _), ts in got.items() if a == "2" for t in ts]
        assert {w for a, w in got if a == "1"} == {"leader", "child"}
        # Attempt 1 ticked past the cut (SIGTERM was ignored) and stopped before the requeue;
        # attempt 2 started after it: the two copies never ran at once.
        assert max(first) > cut_at
        assert max(first) < requeued["at"] < min(second), (max(first), requeued, min(second))

    run(main())


async def _as_future(value: Any) -> Any:
    return value


async def _status_ok(svc: Service, path: str) -> bool:
    status, _ = await svc.call("GET", path, ADMIN)
    return status == 200


async def _requeue_event(svc: Service, job_id: int) -> dict[str, Any] | None:
    status, body = await svc.call("GET", f"/v1/jobs/{job_id}/events", ADMIN)
    assert status == 200, body
    for ev in body["events"]:
        if ev["state"] == "PREEMPTED":
            return dict(ev)
    return None


async def _has_ticks(svc: Service, job_id: int, attempt: str) -> bool:
    return any(a == attempt for a, _ in await ticks(svc, job_id))


async def _heartbeat_after(svc: Service, name: str, at: float) -> bool:
    n = await node(svc, name)
    return n["state"] == "up" and (n["heartbeat_at"] or 0) > at


def test_server_requeues_a_silent_node_no_earlier_than_lease_plus_grace(tmp_path: Path) -> None:
    lease, grace, node_timeout = 1.0, 0.8, 0.3

    async def main() -> None:
        async with running_service(
            tmp_path, lease=lease, grace=grace, node_timeout=node_timeout
        ) as svc:
            body = {"name": "n1", "cpu_milli": 4000, "memory_mib": 4096, "gpus": []}
            status, reg = await svc.call("POST", "/v1/nodes", ADMIN, json=body)
            assert status == 201, reg
            assert reg["lease"] == {"seconds": lease, "grace": grace}
            job = await svc.submit(MEMBER, name="j", command=["sleep", "60"])
            status, work = await svc.call("GET", "/v1/nodes/n1/assignments?wait=5", ADMIN)
            assert [a["job_id"] for a in work["assignments"]] == [job["id"]]
            report = {"job_id": job["id"], "attempt": 1, "rank": 0, "state": "running"}
            hb = {"tasks": [report]}
            status, answer = await svc.call("POST", "/v1/nodes/n1/heartbeat", ADMIN, json=hb)
            assert status == 200 and answer["lease"] == {"seconds": lease, "grace": grace}
            last = (await node(svc, "n1"))["heartbeat_at"]
            await svc.wait(job["id"], MEMBER, {"RUNNING"})
            # Silent from here on: down after node_timeout, but the job stays put until the
            # lease and the grace after it have passed.
            await wait_for(
                "n1 to be marked down",
                lambda: _state_is(svc, "n1", "down"),
                timeout=5,
            )
            status, still = await svc.call("GET", f"/v1/jobs/{job['id']}", MEMBER)
            assert still["state"] == "RUNNING", still
            assert time.time() - last < lease + grace
            requeued = await wait_for(
                "the requeue", lambda: _requeue_event(svc, job["id"]), timeout=10
            )
            assert requeued["at"] - last >= lease + grace
            assert "lease" in requeued["message"] and "down" in requeued["message"]

    run(main())


async def _state_is(svc: Service, name: str, state: str) -> bool:
    return (await node(svc, name))["state"] == state


def test_heartbeats_keep_the_job_where_it_is(tmp_path: Path) -> None:
    """A node that renews keeps its job well past lease + grace (no spurious requeue)."""
    lease, grace = 1.6, 0.4

    async def main() -> None:
        async with running_service(tmp_path, lease=lease, grace=grace) as svc:
            await svc.start_agent("node-a", tmp_path / "agent-a")  # heartbeats every 0.5 s
            job = await svc.submit(MEMBER, name="long", command=["sleep", "30"])
            await svc.wait(job["id"], MEMBER, {"RUNNING"})
            await asyncio.sleep(2 * (lease + grace))
            status, now = await svc.call("GET", f"/v1/jobs/{job['id']}", MEMBER)
            assert now["state"] == "RUNNING" and now["attempt"] == 1, now
            status, _ = await svc.call("POST", f"/v1/jobs/{job['id']}/cancel", MEMBER)
            assert status == 200
            await svc.wait(job["id"], MEMBER)

    run(main())


def test_tasks_of_a_killed_agent_die_with_it(tmp_path: Path) -> None:
    mark = uuid.uuid4().hex

    async def main() -> None:
        async with running_service(tmp_path, lease=5.0, grace=1.0) as svc:
            log = tmp_path / "agent.log"
            with agent_process(svc.url, "node-a", tmp_path / "agent", log) as agent:
                await wait_for(
                    "node-a to register", lambda: _status_ok(svc, "/v1/nodes/node-a"), 20
                )
                job = await svc.submit(
                    MEMBER,
                    name="ticker",
                    command=[PY, "-c", TICKER],
                    env={MARK_VAR: mark},
                    tasks={"resources": {"cpu_milli": 100, "memory_mib": 64}},
                )
                await svc.wait(job["id"], MEMBER, {"RUNNING"}, timeout=20)
                await wait_for(
                    "the task and its child",
                    lambda: _as_future(len(marked_processes(mark)) == 2),
                    timeout=10,
                )
                # Give the agent a heartbeat to learn the server's grace (1 s) and tell its
                # tether, then kill it without a chance to clean up.
                await asyncio.sleep(1.0)
                agent.kill()
                agent.wait()
                killed = time.monotonic()
                # The tasks ignore SIGTERM: the tether's SIGKILL after the grace ends them,
                # long before the server may requeue (lease 5 s + grace 1 s).
                await wait_for(
                    "the orphaned task to die",
                    lambda: _as_future(not marked_processes(mark)),
                    timeout=5,
                )
                assert time.monotonic() - killed < 4.0
                tether_log = tmp_path / "agent" / "tether.log"
                await wait_for(
                    "the tether's note",
                    lambda: _as_future("stopped task groups" in tether_log.read_text()),
                    timeout=5,
                )

    run(main())


def test_next_attempt_waits_until_the_drained_one_has_stopped(tmp_path: Path) -> None:
    """Drained (or preempted) tasks get their grace; the job's next attempt is handed to its
    new node only once the old task has reported its exit."""

    async def main() -> None:
        async with running_service(tmp_path) as svc:
            body = {"name": "n1", "cpu_milli": 4000, "memory_mib": 4096, "gpus": []}
            status, _ = await svc.call("POST", "/v1/nodes", ADMIN, json=body)
            assert status == 201
            job = await svc.submit(MEMBER, name="j", command=["sleep", "60"])
            status, work = await svc.call("GET", "/v1/nodes/n1/assignments?wait=5", ADMIN)
            assert [a["job_id"] for a in work["assignments"]] == [job["id"]]
            running = {"job_id": job["id"], "attempt": 1, "rank": 0, "state": "running"}
            await svc.call("POST", "/v1/nodes/n1/tasks", ADMIN, json=running)
            await svc.wait(job["id"], MEMBER, {"RUNNING"})
            status, _ = await svc.call("POST", "/v1/nodes", ADMIN, json={**body, "name": "n2"})
            assert status == 201
            status, _ = await svc.call("POST", "/v1/nodes/n1/drain", ADMIN)
            assert status == 200
            placed = await svc.wait(job["id"], MEMBER, {"SCHEDULED"})
            assert placed["attempt"] == 2 and placed["placement"][0]["node"] == "n2"
            # n1 was told to stop attempt 1 and has not confirmed: n2 gets nothing yet.
            status, work = await svc.call("GET", "/v1/nodes/n1/assignments?wait=0", ADMIN)
            assert {"job_id": job["id"], "attempt": 1} in work["cancel"]
            status, work = await svc.call("GET", "/v1/nodes/n2/assignments?wait=1", ADMIN)
            assert work["assignments"] == []
            stopped = {**running, "state": "exited", "exit_code": -15, "reason": "cancelled"}
            await svc.call("POST", "/v1/nodes/n1/tasks", ADMIN, json=stopped)
            status, work = await svc.call("GET", "/v1/nodes/n2/assignments?wait=5", ADMIN)
            assert [(a["job_id"], a["attempt"]) for a in work["assignments"]] == [(job["id"], 2)]
            # A job that ends has no next attempt to hold: nothing of it stays fenced.
            second = {**running, "attempt": 2}
            await svc.call("POST", "/v1/nodes/n2/tasks", ADMIN, json=second)
            await svc.wait(job["id"], MEMBER, {"RUNNING"})
            status, _ = await svc.call("POST", f"/v1/jobs/{job['id']}/cancel", MEMBER)
            assert status == 200
            assert svc.app[CONTROLLER]._fenced_on == {}

    run(main())
