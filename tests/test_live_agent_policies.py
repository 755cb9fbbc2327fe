"""The agent's side of the live policies, with real task processes: preemption with a grace
period (SIGTERM, a checkpoint into ``CPLAT_CHECKPOINT_DIR``, SIGKILL, the requeued attempt
resuming from ``CPLAT_RESUME_FROM``), and MIG instances handed to tasks by UUID. The server is
the fake of tests/test_agent.py, taught to record checkpoints.
"""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402
from test_agent import (  # noqa: E402
    A100_PROFILES,
    FakeGpu,
    FakeMig,
    FakeNvml,
    FakeServer,
    assignment,
    running_agent,
    until,
)

from cplat.runtime.launch import TaskKey  # noqa: E402

PY = sys.executable

# A task that traps SIGTERM: it writes its step to the checkpoint folder and exits 0. Started
# again, it prints what it resumes from. "stubborn" ignores SIGTERM and writes nothing whole.
TRAINER = textwrap.dedent(
    """
    import os, signal, sys, time
    ck = os.environ["CPLAT_CHECKPOINT_DIR"]
    resume = os.environ.get("CPLAT_RESUME_FROM")
    if resume:
        print("resumed", open(os.path.join(resume, "state.json")).read(), flush=True)
        sys.exit(0)
    def stop(*_):
        if "stubborn" in sys.argv:
            open(os.path.join(ck, "partial"), "w").write("half")
            return
        time.sleep(0.2)  # a checkpoint takes a while
        open(os.path.join(ck, "state.json"), "w").write('{"step": 1234}')
        print("checkpointed", flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    print("training", flush=True)
    while True:
        time.sleep(0.05)
    """
)


class CheckpointServer(FakeServer):
    """The fake server of tests/test_agent.py plus ``POST /v1/jobs/{id}/checkpoints``."""

    def __init__(self) -> None:
        super().__init__()
        self.checkpoints: list[dict[str, Any]] = []

    async def start(self, port: int = 0) -> None:
        app = web.Application(middlewares=[self._auth])
        app.router.add_post("/v1/nodes", self._register)
        app.router.add_post("/v1/nodes/{name}/heartbeat", self._heartbeat)
        app.router.add_get("/v1/nodes/{name}/assignments", self._assignments)
        app.router.add_post("/v1/nodes/{name}/tasks", self._task)
        app.router.add_post("/v1/jobs/{id}/logs", self._logs)
        app.router.add_post("/v1/jobs/{id}/checkpoints", self._checkpoint)
        self.runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def _checkpoint(self, request: web.Request) -> web.Response:
        body = await request.json()
        # The exit report must not have arrived yet: the requeued attempt needs this first.
        key = TaskKey(int(request.match_info["id"]), body["attempt"], 0)
        body["reported_before"] = self.exit_of(key) is not None
        self.checkpoints.append({"job_id": key.job_id, **body})
        return web.json_response({"id": len(self.checkpoints)}, status=201)


def test_preemption_grace_checkpoint_then_resume(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(TRAINER)

    async def main() -> None:
        server = CheckpointServer()
        await server.start()
        try:
            async with running_agent(server.url, tmp_path / "work", stop_grace=0.1) as agent:
                await until(lambda: server.nodes, "registration")
                server.assign("node-a", assignment(7, command=[PY, str(script)]))
                await until(lambda: "training" in server.output(7), "the task to start")
                # Preempted with the scheduler's grace (5 s), far above the agent's own 0.1 s.
                server.cancel_by_poll.append({"job_id": 7, "attempt": 1, "grace": 5})
                await until(lambda: server.exit_of(TaskKey(7, 1, 0)), "the task to stop")
                assert server.exit_of(TaskKey(7, 1, 0))["exit_code"] == 0
                assert "checkpointed" in server.output(7)
                (ck,) = server.checkpoints
                assert ck["complete"] and ck["step"] == 1 and not ck["reported_before"]
                folder = Path(ck["uri"])
                assert folder == agent.launcher.checkpoint_dir(7)
                assert json.loads((folder / "state.json").read_text()) == {"step": 1234}
                # The requeued attempt resumes from it.
                server.assign(
                    "node-a",
                    assignment(7, attempt=2, command=[PY, str(script)], resume_from=str(folder)),
                )
                await until(lambda: server.exit_of(TaskKey(7, 2, 0)), "the second attempt")
                assert 'resumed {"step": 1234}' in server.output(7)
                assert len(server.checkpoints) == 1  # it wrote nothing new

                # A task deaf to SIGTERM is killed when the grace ends; what it left is
                # recorded as incomplete.
                server.assign("node-a", assignment(8, command=[PY, str(script), "stubborn"]))
                await until(lambda: "training" in server.output(8), "the stubborn task")
                server.cancel_by_poll.append({"job_id": 8, "attempt": 1, "grace": 0.5})
                await until(lambda: server.exit_of(TaskKey(8, 1, 0)), "the stubborn task to die")
                assert server.exit_of(TaskKey(8, 1, 0))["exit_code"] == -9
                assert server.checkpoints[-1]["job_id"] == 8
                assert server.checkpoints[-1]["complete"] is False
                # A malformed grace falls back to the agent's own.
                server.assign("node-a", assignment(9, command=[PY, str(script), "stubborn"]))
                await until(lambda: "training" in server.output(9), "the third task")
                server.cancel_by_poll.append({"job_id": 9, "attempt": 1, "grace": "forever"})
                server.cancel_by_poll.append({"job_id": 9, "attempt": 1, "grace": -3})
                await until(lambda: server.exit_of(TaskKey(9, 1, 0)), "the third task to die", 5)
        finally:
            await server.stop()

    asyncio.run(main())


def test_mig_instances_reach_tasks_by_uuid(tmp_path: Path) -> None:
    nvml = FakeNvml(
        [
            FakeGpu(0, "GPU-aaaa", "NVIDIA A100-SXM4-80GB", "00000000:07:00.0", 81920,
                    mig=[FakeMig(1, 0, "MIG-1111", 3, 40192, 9),
                         FakeMig(5, 0, "MIG-2222", 1, 9728, 19)]),
            FakeGpu(1, "GPU-bbbb", "NVIDIA A100-SXM4-80GB", "00000000:0F:00.0", 81920),
        ]
    )  # fmt: skip
    assert A100_PROFILES[2][1] == "MIG 3g.40gb"
    show = [PY, "-c", "import os; print('cvd=' + os.environ['CUDA_VISIBLE_DEVICES'])"]

    async def main() -> None:
        server = FakeServer()
        await server.start()
        try:
            async with running_agent(server.url, tmp_path / "work", nvml=nvml) as agent:
                # The server records the node before the agent reads its answer, so wait for
                # the agent's side of the registration, not the server's.
                await until(lambda: agent.slots, "registration")
                assert [s.visible() for s in agent.slots] == ["MIG-1111", "MIG-2222", "1"]
                server.assign("node-a", assignment(1, command=show, gpus=[1]))
                server.assign("node-a", assignment(2, command=show, gpus=[2]))
                server.assign("node-a", assignment(3, command=show, gpus=[7]))
                for job in (1, 2, 3):
                    await until(lambda j=job: server.exit_of(TaskKey(j, 1, 0)), f"task {job}")
                assert "cvd=MIG-2222" in server.output(1)
                assert "cvd=1" in server.output(2)
                bad = server.exit_of(TaskKey(3, 1, 0))
                assert bad["exit_code"] == 126 and "does not have" in bad["reason"]
        finally:
            await server.stop()

    asyncio.run(main())


def test_a_rank_cancel_stops_that_rank_only(tmp_path: Path) -> None:
    loop = [PY, "-c", "import time\nprint('up', flush=True)\nwhile True: time.sleep(0.05)"]

    async def main() -> None:
        server = FakeServer()
        await server.start()
        try:
            async with running_agent(server.url, tmp_path / "work", stop_grace=0.5) as agent:
                await until(lambda: server.nodes, "registration")
                for rank in (0, 1, 2):
                    server.assign("node-a", assignment(12, rank, command=loop, world_size=3))
                await until(lambda: len(agent.launcher.processes) == 3, "three ranks")
                # An elastic job shrank: rank 2 goes, ranks 0 and 1 run on.
                server.cancel_by_poll.append({"job_id": 12, "attempt": 1, "rank": 2})
                await until(lambda: server.exit_of(TaskKey(12, 1, 2)), "rank 2 to stop")
                await asyncio.sleep(0.3)
                assert server.exit_of(TaskKey(12, 1, 0)) is None
                assert server.exit_of(TaskKey(12, 1, 1)) is None
                server.cancel_by_poll.append({"job_id": 12, "attempt": 1})
                for rank in (0, 1):
                    await until(lambda r=rank: server.exit_of(TaskKey(12, 1, r)), f"rank {rank}")
        finally:
            await server.stop()

    asyncio.run(main())
