"""The node agent against a fake server: registration, heartbeats, real task processes, logs,
exit reports, cancellation, crash recovery, server outages; and discovery with a fake NVML.

The fake server is a small aiohttp app speaking the agent protocol of docs/service.md. Tasks
are real subprocesses; nothing needs a GPU (NVML is a fake, or absent).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402

from cplat.runtime.agent import (  # noqa: E402
    Agent,
    AgentAuthError,
    AgentError,
    _LogShipper,
    _UnreachableError,
)
from cplat.runtime.discovery import (  # noqa: E402
    GpuMonitor,
    cpu_milli,
    discover,
    gpu_health,
    memory_mib,
)
from cplat.runtime.launch import (  # noqa: E402
    Launcher,
    LaunchError,
    TaskKey,
    TaskRecord,
    _boot_id,
    _start_time,
    task_argv,
    task_env,
)

TOKEN = "agent-cluster-admin-token"
PY = sys.executable
MIB = 1 << 20


# --------------------------------------------------------------------------------------------
# A fake NVML: the pynvml functions discovery uses, over two A100s. GPU 0 is MIG-enabled with
# two instances and NVLinked to GPU 1; GPU 1 has uncorrected ECC errors and no NUMA query (so
# its NUMA node comes from sysfs). Constants carry pynvml's values (a test checks them).
# --------------------------------------------------------------------------------------------


class FakeNVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return {3: "Not Supported", 10: "Timeout", 12: "NVML Shared Library Not Found"}.get(
            self.value, f"NVML error {self.value}"
        )


@dataclass
class FakeMig:
    gi: int
    ci: int
    uuid: str
    slices: int
    memory_mb: int
    profile_id: int
    #: nvmlDeviceGetGpuInstanceById fails with this (e.g. 4, no permission) when set.
    lookup_error: int | None = None


#: A100-80GB GPU instance profiles: profile index -> (profile id, name), as the driver lists.
A100_PROFILES = {
    0: (19, "MIG 1g.10gb"),
    1: (14, "MIG 2g.20gb"),
    2: (9, "MIG 3g.40gb"),
    3: (5, "MIG 4g.40gb"),
    4: (0, "MIG 7g.80gb"),
    7: (15, "MIG 1g.10gb+me"),
    9: (20, "MIG 1g.20gb"),
}


@dataclass
class FakeGpu:
    index: int
    uuid: str
    name: str
    bus_id: str
    memory_mib: int
    mig: list[FakeMig] | None = None
    links: dict[int, str] = field(default_factory=dict)  # active link -> remote bus id
    switch_links: set[int] = field(default_factory=set)
    numa: int | None = None  # None: nvmlDeviceGetNumaNodeId not supported
    ecc_uncorrected: int = 0
    pending_retirement: bool | None = None  # None: not supported (A100 remaps rows)
    remapped: tuple[int, int, int, int] | None = (0, 0, 0, 0)
    temperature: int = 40
    slowdown: int = 85
    lost: bool = False


class FakeNvml:
    NVMLError = FakeNVMLError
    NVML_SUCCESS = 0
    NVML_ERROR_INVALID_ARGUMENT = 2
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_NOT_FOUND = 6
    NVML_ERROR_TIMEOUT = 10
    NVML_ERROR_LIBRARY_NOT_FOUND = 12
    NVML_ERROR_FUNCTION_NOT_FOUND = 13
    NVML_ERROR_GPU_IS_LOST = 15
    NVML_FEATURE_DISABLED = 0
    NVML_FEATURE_ENABLED = 1
    NVML_DEVICE_MIG_DISABLE = 0
    NVML_DEVICE_MIG_ENABLE = 1
    NVML_NVLINK_MAX_LINKS = 36
    NVML_NVLINK_DEVICE_TYPE_GPU = 0
    NVML_NVLINK_DEVICE_TYPE_SWITCH = 2
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0
    NVML_TEMPERATURE_GPU = 0
    NVML_TEMPERATURE_THRESHOLD_SLOWDOWN = 1
    NVML_GPU_INSTANCE_PROFILE_COUNT = 0x12
    nvmlEventTypeXidCriticalError = 0x8  # noqa: N815

    LINKS_PER_GPU = 12  # an A100's NVLink count: higher link numbers are invalid

    def __init__(self, gpus: list[FakeGpu], init_error: int | None = None) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.initialized = 0
        self.events: list[SimpleNamespace] = []
        self.registered: set[int] = set()

    # -- library --
    def nvmlInit(self) -> None:  # noqa: N802
        if self.init_error is not None:
            raise FakeNVMLError(self.init_error)
        self.initialized += 1

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.initialized -= 1

    def _ready(self) -> None:
        if self.initialized <= 0:
            raise FakeNVMLError(1)

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        self._ready()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:  # noqa: N802
        self._ready()
        gpu = self.gpus[index]
        if gpu.lost:
            raise FakeNVMLError(self.NVML_ERROR_GPU_IS_LOST)
        return gpu

    @staticmethod
    def _gpu(h: Any) -> FakeGpu:
        if not isinstance(h, FakeGpu):  # a MIG handle where a full GPU is needed
            raise FakeNVMLError(3)
        return h

    # -- identity --
    def nvmlDeviceGetName(self, h: Any) -> str:  # noqa: N802
        return self._gpu(h).name

    def nvmlDeviceGetUUID(self, h: Any) -> str:  # noqa: N802
        return h.uuid

    def nvmlDeviceGetIndex(self, h: Any) -> int:  # noqa: N802
        return self._gpu(h).index

    def nvmlDeviceGetMemoryInfo(self, h: Any) -> SimpleNamespace:  # noqa: N802
        if isinstance(h, FakeMig):
            return SimpleNamespace(total=h.memory_mb * MIB, free=0, used=0)
        return SimpleNamespace(total=h.memory_mib * MIB, free=0, used=0)

    def nvmlDeviceGetPciInfo(self, h: Any) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(busId=self._gpu(h).bus_id)

    def nvmlDeviceGetNumaNodeId(self, h: Any) -> int:  # noqa: N802
        gpu = self._gpu(h)
        if gpu.numa is None:
            raise FakeNVMLError(self.NVML_ERROR_FUNCTION_NOT_FOUND)
        return gpu.numa

    # -- MIG --
    def nvmlDeviceGetMigMode(self, h: Any) -> list[int]:  # noqa: N802
        on = int(self._gpu(h).mig is not None)
        return [on, on]

    def nvmlDeviceGetMaxMigDeviceCount(self, h: Any) -> int:  # noqa: N802
        return 7 if self._gpu(h).mig is not None else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: Any, i: int) -> FakeMig:  # noqa: N802
        migs = self._gpu(h).mig or []
        # Slots are sparse on real devices: instance 0 lives in slot 0, instance 1 in slot 3.
        slots = {0: 0, 3: 1}
        if i not in slots or slots[i] >= len(migs):
            raise FakeNVMLError(self.NVML_ERROR_NOT_FOUND)
        return migs[slots[i]]

    def nvmlDeviceGetGpuInstanceId(self, h: Any) -> int:  # noqa: N802
        if not isinstance(h, FakeMig):
            raise FakeNVMLError(self.NVML_ERROR_INVALID_ARGUMENT)
        return h.gi

    def nvmlDeviceGetComputeInstanceId(self, h: Any) -> int:  # noqa: N802
        if not isinstance(h, FakeMig):
            raise FakeNVMLError(self.NVML_ERROR_INVALID_ARGUMENT)
        return h.ci

    def nvmlDeviceGetGpuInstanceProfileInfo(self, h: Any, profile: int) -> SimpleNamespace:  # noqa: N802
        if self._gpu(h).mig is None or profile not in A100_PROFILES:
            raise FakeNVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        pid, name = A100_PROFILES[profile]
        return SimpleNamespace(id=pid, name=name.encode(), sliceCount=int(name[4]))

    def nvmlDeviceGetGpuInstanceById(self, h: Any, gi: int) -> SimpleNamespace:  # noqa: N802
        for mig in self._gpu(h).mig or []:
            if mig.gi == gi:
                if mig.lookup_error is not None:
                    raise FakeNVMLError(mig.lookup_error)
                return SimpleNamespace(mig=mig)
        raise FakeNVMLError(self.NVML_ERROR_NOT_FOUND)

    def nvmlGpuInstanceGetInfo(self, gi: Any) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(id=gi.mig.gi, profileId=gi.mig.profile_id)

    def nvmlDeviceGetAttributes(self, h: Any) -> SimpleNamespace:  # noqa: N802
        if not isinstance(h, FakeMig):
            raise FakeNVMLError(3)
        return SimpleNamespace(gpuInstanceSliceCount=h.slices, memorySizeMB=h.memory_mb)

    # -- NVLink --
    def _link(self, h: Any, link: int) -> FakeGpu:
        gpu = self._gpu(h)
        if link >= self.LINKS_PER_GPU:
            raise FakeNVMLError(self.NVML_ERROR_INVALID_ARGUMENT)
        return gpu

    def nvmlDeviceGetNvLinkState(self, h: Any, link: int) -> int:  # noqa: N802
        gpu = self._link(h, link)
        return int(link in gpu.links or link in gpu.switch_links)

    def nvmlDeviceGetNvLinkRemotePciInfo(self, h: Any, link: int) -> SimpleNamespace:  # noqa: N802
        gpu = self._link(h, link)
        if link in gpu.switch_links:
            return SimpleNamespace(busId="00000000:C5:00.0")  # the NVSwitch itself
        if link not in gpu.links:
            raise FakeNVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        return SimpleNamespace(busId=gpu.links[link])

    def nvmlDeviceGetNvLinkRemoteDeviceType(self, h: Any, link: int) -> int:  # noqa: N802
        gpu = self._link(h, link)
        return 2 if link in gpu.switch_links else 0

    # -- health --
    def nvmlDeviceGetTotalEccErrors(self, h: Any, kind: int, counter: int) -> int:  # noqa: N802
        gpu = self._gpu(h)
        return gpu.ecc_uncorrected if (kind, counter) == (1, 0) else 0

    def nvmlDeviceGetRetiredPagesPendingStatus(self, h: Any) -> int:  # noqa: N802
        gpu = self._gpu(h)
        if gpu.pending_retirement is None:
            raise FakeNVMLError(3)
        return int(gpu.pending_retirement)

    def nvmlDeviceGetRemappedRows(self, h: Any) -> tuple[int, int, int, int]:  # noqa: N802
        gpu = self._gpu(h)
        if gpu.remapped is None:
            raise FakeNVMLError(3)
        return gpu.remapped

    def nvmlDeviceGetTemperature(self, h: Any, sensor: int) -> int:  # noqa: N802
        return self._gpu(h).temperature

    def nvmlDeviceGetTemperatureThreshold(self, h: Any, kind: int) -> int:  # noqa: N802
        return self._gpu(h).slowdown if kind == 1 else 95

    # -- events --
    def nvmlEventSetCreate(self) -> object:  # noqa: N802
        return object()

    def nvmlEventSetFree(self, event_set: object) -> None:  # noqa: N802
        return None

    def nvmlDeviceGetSupportedEventTypes(self, h: Any) -> int:  # noqa: N802
        self._gpu(h)
        return 0x8 | 0x1

    def nvmlDeviceRegisterEvents(self, h: Any, kinds: int, event_set: object) -> None:  # noqa: N802
        self.registered.add(self._gpu(h).index)

    def nvmlEventSetWait(self, event_set: object, timeout_ms: int) -> SimpleNamespace:  # noqa: N802
        if not self.events:
            raise FakeNVMLError(self.NVML_ERROR_TIMEOUT)
        return self.events.pop(0)

    def xid(self, index: int, code: int) -> None:
        """Queue an Xid event as the driver would."""
        self.events.append(
            SimpleNamespace(
                device=self.gpus[index],
                eventType=0x8,
                eventData=code,
                gpuInstanceId=0xFFFFFFFF,
                computeInstanceId=0xFFFFFFFF,
            )
        )


BUS0, BUS1 = "00000000:07:00.0", "00000000:0F:00.0"


def two_a100s() -> FakeNvml:
    return FakeNvml(
        [
            FakeGpu(
                index=0,
                uuid="GPU-aaaa",
                name="NVIDIA A100-SXM4-80GB",
                bus_id=BUS0,
                memory_mib=81920,
                mig=[
                    FakeMig(gi=1, ci=0, uuid="MIG-1111", slices=3, memory_mb=40192, profile_id=9),
                    # The profile lookup is refused: the name is derived from the attributes.
                    FakeMig(
                        gi=5,
                        ci=0,
                        uuid="MIG-2222",
                        slices=1,
                        memory_mb=9728,
                        profile_id=19,
                        lookup_error=4,
                    ),
                ],
                # Two links to GPU 1; the remote id in the legacy short spelling.
                links={0: "0000:0F:00.0", 1: "0000:0F:00.0"},
                numa=0,
            ),
            FakeGpu(
                index=1,
                uuid="GPU-bbbb",
                name="NVIDIA A100-SXM4-80GB",
                bus_id=BUS1,
                memory_mib=81920,
                links={0: BUS0, 1: BUS0},
                numa=None,
                ecc_uncorrected=2,
            ),
        ]
    )


def no_gpus() -> FakeNvml:
    return FakeNvml([])


def sysfs_root(tmp: Path) -> Path:
    node = tmp / "root/sys/bus/pci/devices/0000:0f:00.0"
    node.mkdir(parents=True)
    (node / "numa_node").write_text("1\n")
    return tmp / "root"


# --------------------------------------------------------------------------------------------
# A fake server speaking the agent protocol.
# --------------------------------------------------------------------------------------------


def error(status: int, code: str, message: str) -> web.Response:
    body = {"error": {"code": code, "message": message, "field": None}}
    return web.json_response(body, status=status)


class FakeServer:
    """Records what agents send; hands out assignments until the agent reports the task."""

    def __init__(self) -> None:
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.auth: list[str | None] = []
        self.registrations: list[dict[str, Any]] = []
        self.heartbeats: list[dict[str, Any]] = []
        self.reports: list[dict[str, Any]] = []
        self.logs: dict[int, list[dict[str, Any]]] = defaultdict(list)
        self.log_bodies: list[int] = []
        #: A job's stored output at the moment each exit report arrived.
        self.output_at_exit: dict[TaskKey, tuple[str, str]] = {}
        self.reject_registration: tuple[int, str] | None = None
        #: Hand an assignment out on every poll even once reported (a misbehaving server).
        self.keep_handing_out = False
        self.forget()

    def forget(self) -> None:
        """Lose what a restarted server without a store would lose."""
        self.nodes: dict[str, dict[str, Any]] = {}
        self.pending: dict[tuple[str, TaskKey], dict[str, Any]] = {}
        self.cancel_by_heartbeat: list[dict[str, Any]] = []
        self.cancel_by_poll: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def assign(self, node: str, assignment: dict[str, Any]) -> None:
        self.pending[(node, TaskKey.of(assignment))] = assignment

    def reports_of(self, key: TaskKey) -> list[dict[str, Any]]:
        return [r for r in self.reports if TaskKey.of(r) == key]

    def exit_of(self, key: TaskKey) -> dict[str, Any] | None:
        done = [r for r in self.reports_of(key) if r["state"] == "exited"]
        return done[-1] if done else None

    def output(self, job: int, stream: str = "stdout") -> str:
        return "".join(c["data"] for c in self.logs[job] if c["stream"] == stream)

    async def start(self, port: int = 0) -> None:
        app = web.Application(middlewares=[self._auth])
        app.router.add_post("/v1/nodes", self._register)
        app.router.add_post("/v1/nodes/{name}/heartbeat", self._heartbeat)
        app.router.add_get("/v1/nodes/{name}/assignments", self._assignments)
        app.router.add_post("/v1/nodes/{name}/tasks", self._task)
        app.router.add_post("/v1/jobs/{id}/logs", self._logs)
        self.runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        header = request.headers.get("Authorization")
        self.auth.append(header)
        if header != f"Bearer {TOKEN}":
            return error(401, "unauthorized", "bad token")
        response: web.StreamResponse = await handler(request)
        return response

    async def _register(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.registrations.append(body)
        if self.reject_registration is not None:
            status, message = self.reject_registration
            return error(status, "bad_request", message)
        created = body["name"] not in self.nodes
        self.nodes[body["name"]] = body
        return web.json_response(
            {"name": body["name"], "state": "up"}, status=201 if created else 200
        )

    def _node(self, request: web.Request) -> str | None:
        name = request.match_info["name"]
        return name if name in self.nodes else None

    async def _heartbeat(self, request: web.Request) -> web.Response:
        node = self._node(request)
        if node is None:
            return error(404, "not_found", "no such node")
        body = await request.json()
        self.heartbeats.append(body)
        for task in body["tasks"]:
            if not self.keep_handing_out:
                self.pending.pop((node, TaskKey.of(task)), None)
        cancel, self.cancel_by_heartbeat = self.cancel_by_heartbeat, []
        return web.json_response({"cancel": cancel})

    async def _assignments(self, request: web.Request) -> web.Response:
        node = self._node(request)
        if node is None:
            return error(404, "not_found", "no such node")
        deadline = time.monotonic() + float(request.query.get("wait", "0"))
        while time.monotonic() < deadline:
            if any(n == node for n, _ in self.pending) or self.cancel_by_poll:
                break
            await asyncio.sleep(0.01)
        mine = [a for (n, _), a in self.pending.items() if n == node]
        cancel, self.cancel_by_poll = self.cancel_by_poll, []
        return web.json_response({"assignments": mine, "cancel": cancel})

    async def _task(self, request: web.Request) -> web.Response:
        node = self._node(request)
        if node is None:
            return error(404, "not_found", "no such node")
        body = await request.json()
        self.reports.append(body)
        if body["state"] == "exited":
            job = body["job_id"]
            self.output_at_exit[TaskKey.of(body)] = (self.output(job), self.output(job, "stderr"))
        if not self.keep_handing_out:
            self.pending.pop((node, TaskKey.of(body)), None)
        return web.json_response({})

    async def _logs(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.log_bodies.append(len(raw))
        body = json.loads(raw)
        self.logs[int(request.match_info["id"])].extend(body["chunks"])
        return web.json_response({}, status=201)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

FAST: dict[str, Any] = {
    "heartbeat_interval": 0.05,
    "poll_wait": 0.3,
    "stop_grace": 1.0,
    "backoff_max": 0.1,
    "log_flush_interval": 0.02,
    "straggler_grace": 0.3,
    "shutdown_timeout": 3.0,
    # These tests are about the protocol; tests/test_isolation.py runs tasks as other users
    # (which could not reach this interpreter, nor the test's temporary directories).
    "task_user": "self",
}


async def until(cond: Callable[[], Any], what: str, timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running_agent(url: str, work_dir: Path, **options: Any) -> AsyncIterator[Agent]:
    opts = {**FAST, "nvml": no_gpus(), **options}
    agent = Agent(url, TOKEN, name=opts.pop("name", "node-a"), work_dir=work_dir, **opts)
    run = asyncio.create_task(agent.run())
    try:
        yield agent
    finally:
        await asyncio.wait_for(agent.stop(), 15)
        await run


@contextlib.asynccontextmanager
async def fake_server() -> AsyncIterator[FakeServer]:
    server = FakeServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def assignment(job: int, rank: int = 0, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "job_id": job,
        "attempt": 1,
        "rank": rank,
        "world_size": 1,
        "local_rank": 0,
        "local_world_size": 1,
        "master_addr": "127.0.0.1",
        "master_port": 29500,
        "command": [PY, "-c", "pass"],
        "env": {},
        "workdir": None,
        "gpus": [],
        "hosts": [{"node": "node-a", "address": "127.0.0.1", "slots": 1}],
        "resume_from": None,
    }
    base.update(extra)
    return base


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def state_tasks(work_dir: Path) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = json.loads((work_dir / "tasks.json").read_text())["tasks"]
    return tasks


# A task that starts a grandchild (`sleep`), writes its pid, says it is ready and waits.
# "graceful": on SIGTERM it waits for its child to end, then exits 7, so it exits 7 only when
# the SIGTERM reached the whole group. "ignore-term": deaf to SIGTERM, child included.
# "exit-now": leaves at once, its child still running.
SPAWNER = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    if "ignore-term" in sys.argv:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen(["sleep", "60"])
    open("child.pid", "w").write(str(child.pid))
    print("ready", flush=True)
    if "exit-now" in sys.argv:
        sys.exit(0)
    if "graceful" in sys.argv:
        signal.signal(signal.SIGTERM, lambda *_: None)
        child.wait()
        print("graceful", flush=True)
        sys.exit(7)
    time.sleep(60)
    """
)


# --------------------------------------------------------------------------------------------
# Agent tests
# --------------------------------------------------------------------------------------------


def test_registration_body_and_heartbeats(tmp_path: Path) -> None:
    async def main() -> None:
        async with fake_server() as server:
            async with running_agent(
                server.url,
                tmp_path / "agent",
                nvml=two_a100s(),
                labels={"zone": "z1"},
                rack=7,
            ):
                await until(lambda: len(server.heartbeats) >= 3, "three heartbeats")
        reg = server.registrations[0]
        assert reg["name"] == "node-a"
        assert reg["hostname"] == socket.gethostname()
        assert isinstance(reg["address"], str) and reg["address"]
        assert reg["cpu_milli"] == cpu_milli() > 0
        assert reg["memory_mib"] == memory_mib() > 0
        assert reg["labels"] == {"zone": "z1"} and reg["rack"] == 7 and "spine" not in reg
        assert [g["uuid"] for g in reg["gpus"]] == ["GPU-aaaa", "GPU-bbbb"]
        assert [g["healthy"] for g in reg["gpus"]] == [True, False]
        for hb in server.heartbeats:
            assert hb["tasks"] == []
            assert [(g["index"], g["healthy"]) for g in hb["gpus"]] == [(0, True), (1, False)]
            assert "ECC" in hb["gpus"][1]["reason"]
        assert server.auth and all(a == f"Bearer {TOKEN}" for a in server.auth)

    asyncio.run(main())


ENV_DUMP = textwrap.dedent(
    """
    import json, os
    names = ["CUDA_VISIBLE_DEVICES", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
             "MASTER_ADDR", "MASTER_PORT", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
             "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE", "CPLAT_JOB_ID",
             "CPLAT_ATTEMPT", "CPLAT_SERVER", "CPLAT_TOKEN", "CPLAT_RESUME_FROM", "CPLAT_EXTRA",
             "FOO", "NCCL_DEBUG"]
    out = {n: os.environ.get(n) for n in names}
    out["cwd"] = os.getcwd()
    out["hostfile"] = open(os.environ["CPLAT_HOSTFILE"]).read()
    print(json.dumps(out))
    """
)


def test_assignment_runs_with_the_contract_environment(tmp_path: Path) -> None:
    work = tmp_path / "agent"
    job = assignment(
        42,
        rank=1,
        attempt=2,
        world_size=4,
        local_rank=1,
        local_world_size=2,
        master_addr="10.0.0.1",
        master_port=29511,
        gpus=[0, 1],
        token="job-42-token",
        resume_from="s3://ckpt/42/step-100",
        hosts=[
            {"node": "node-a", "address": "10.0.0.1", "slots": 2},
            {"node": "node-b", "address": "10.0.0.2", "slots": 2},
        ],
        # The job tries to move itself onto other GPUs, another rank and another identity:
        # cplat's values win; its own variables pass.
        env={
            "FOO": "bar",
            "NCCL_DEBUG": "INFO",
            "RANK": "99",
            "CUDA_VISIBLE_DEVICES": "7",
            "CPLAT_TOKEN": "forged",
        },
        command=[PY, "-c", ENV_DUMP],
    )
    key = TaskKey(42, 2, 1)
    # The agent's own environment holds its admin token: it must not reach the task.
    base_env = {**os.environ, "CPLAT_TOKEN": TOKEN, "CPLAT_EXTRA": "agent-only"}

    async def main() -> None:
        async with fake_server() as server:
            server.keep_handing_out = True
            server.assign("node-a", job)
            async with running_agent(server.url, work, base_env=base_env):
                await until(lambda: server.exit_of(key) is not None, "the exit report")
                # Polls kept returning the assignment; it ran once all the same.
                await asyncio.sleep(0.3)
                server.pending.clear()
                await until(
                    lambda: (
                        server.heartbeats
                        and not server.heartbeats[-1]["tasks"]
                        and any(
                            t["state"] == "exited" for h in server.heartbeats for t in h["tasks"]
                        )
                    ),
                    "an acknowledged exit to leave the heartbeats",
                )
                assert state_tasks(work) == []
            states = [r["state"] for r in server.reports_of(key)]
            assert states == ["running", "exited"], states
            running, exited = server.reports_of(key)
            assert isinstance(running["pid"], int) and running["exit_code"] is None
            assert exited["exit_code"] == 0 and exited["pid"] == running["pid"]
            env = json.loads(server.output(42))
            assert env == {
                "CUDA_VISIBLE_DEVICES": "0,1",
                "RANK": "1",
                "WORLD_SIZE": "4",
                "LOCAL_RANK": "1",
                "LOCAL_WORLD_SIZE": "2",
                "MASTER_ADDR": "10.0.0.1",
                "MASTER_PORT": "29511",
                "OMPI_COMM_WORLD_RANK": "1",
                "OMPI_COMM_WORLD_SIZE": "4",
                "OMPI_COMM_WORLD_LOCAL_RANK": "1",
                "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
                "CPLAT_JOB_ID": "42",
                "CPLAT_ATTEMPT": "2",
                "CPLAT_SERVER": server.url,
                "CPLAT_TOKEN": "job-42-token",
                "CPLAT_RESUME_FROM": "s3://ckpt/42/step-100",
                "CPLAT_EXTRA": None,
                "FOO": "bar",
                "NCCL_DEBUG": "INFO",
                "cwd": str(work / "tasks" / "42.2.1"),
                "hostfile": "10.0.0.1 slots=2\n10.0.0.2 slots=2\n",
            }
            assert all(c["attempt"] == 2 and c["rank"] == 1 for c in server.logs[42])

    asyncio.run(main())


def test_exit_codes_stderr_shell_strings_and_unstartable_commands(tmp_path: Path) -> None:
    async def main() -> None:
        async with fake_server() as server:
            server.assign("node-a", assignment(1, command="echo out; echo err >&2; exit 3"))
            server.assign("node-a", assignment(2, command=["/nonexistent/prog", "x"]))
            server.assign(
                "node-a", assignment(3, command=[PY, "-c", "pass"], workdir=str(tmp_path / "no"))
            )
            # Output waits long for its batch, so only the flush before an exit report sends it.
            async with running_agent(server.url, tmp_path / "agent", log_flush_interval=30):
                for job in (1, 2, 3):
                    await until(lambda j=job: server.exit_of(TaskKey(j, 1, 0)), f"job {job} exit")
        first = server.exit_of(TaskKey(1, 1, 0))
        assert first is not None and first["exit_code"] == 3 and "reason" not in first
        assert server.output_at_exit[TaskKey(1, 1, 0)] == ("out\n", "err\n")
        missing = server.exit_of(TaskKey(2, 1, 0))
        assert missing is not None and missing["exit_code"] == 127 and missing["pid"] is None
        assert "/nonexistent/prog" in missing["reason"]
        assert "cannot start '/nonexistent/prog'" in server.output_at_exit[TaskKey(2, 1, 0)][1]
        no_dir = server.exit_of(TaskKey(3, 1, 0))
        assert no_dir is not None and no_dir["exit_code"] == 126
        assert "does not exist" in no_dir["reason"]

    asyncio.run(main())


def test_cancel_stops_the_whole_process_group(tmp_path: Path) -> None:
    work = tmp_path / "agent"
    polite, stubborn, leaver = TaskKey(10, 1, 0), TaskKey(11, 1, 0), TaskKey(12, 1, 0)

    def child_pid(key: TaskKey) -> int:
        return int((work / "tasks" / str(key) / "child.pid").read_text())

    async def main() -> None:
        async with fake_server() as server:
            server.assign("node-a", assignment(10, command=[PY, "-c", SPAWNER, "graceful"]))
            server.assign("node-a", assignment(11, command=[PY, "-c", SPAWNER, "ignore-term"]))
            server.assign("node-a", assignment(12, command=[PY, "-c", SPAWNER, "exit-now"]))
            async with running_agent(server.url, work, stop_grace=0.4):
                for job in (10, 11, 12):
                    await until(lambda j=job: "ready" in server.output(j), f"job {job} ready")
                pids = {k: child_pid(k) for k in (polite, stubborn, leaver)}
                assert alive(pids[polite]) and alive(pids[stubborn])
                started = time.monotonic()
                server.cancel_by_heartbeat.append({"job_id": 10, "attempt": 1})
                server.cancel_by_poll.append({"job_id": 11, "attempt": 1})
                await until(lambda: server.exit_of(polite), "the polite task's exit")
                await until(lambda: server.exit_of(stubborn), "the stubborn task's exit")
                assert time.monotonic() - started < 3
                await until(lambda: server.exit_of(leaver), "the leaver's exit")
                # The grandchildren went with their groups (zombies count as gone).
                await until(lambda: not any(alive(p) for p in pids.values()), "grandchildren gone")
        polite_exit = server.exit_of(polite)
        assert polite_exit is not None
        assert (polite_exit["exit_code"], polite_exit["reason"]) == (7, "cancelled")
        # Its last words were stored before its end was reported.
        assert server.output(10) == "ready\ngraceful\n"
        stubborn_exit = server.exit_of(stubborn)
        assert stubborn_exit is not None and stubborn_exit["exit_code"] == -signal.SIGKILL
        leaver_exit = server.exit_of(leaver)
        # The leader exited 0; the sleep it left behind was cleaned up, not waited for.
        assert leaver_exit is not None and leaver_exit["exit_code"] == 0

    asyncio.run(main())


def test_restart_cleans_up_what_a_crashed_agent_left(tmp_path: Path) -> None:
    work = tmp_path / "agent"
    work.mkdir()
    (work / "tasks" / "5.1.0").mkdir(parents=True)
    (work / "tasks" / "6.1.0").mkdir(parents=True)
    # A task group (leader + child) as a crashed agent would leave it, and an unrelated
    # process group whose id the state file records with another start time (a reused id).
    left = subprocess.Popen(
        [PY, "-c", SPAWNER],
        cwd=work / "tasks" / "5.1.0",
        start_new_session=True,
        stdout=subprocess.PIPE,
    )
    decoy = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        assert left.stdout is not None and left.stdout.readline() == b"ready\n"
        child = int((work / "tasks" / "5.1.0" / "child.pid").read_text())
        start = _start_time(left.pid)
        decoy_start = _start_time(decoy.pid)
        assert start is not None and decoy_start is not None
        records = [
            TaskRecord(5, 1, 0, pid=left.pid, pgid=left.pid, start_time=start, boot_id=_boot_id()),
            TaskRecord(6, 1, 0, state="exited", exit_code=5, pid=12345),
            TaskRecord(
                7,
                1,
                0,
                pid=decoy.pid,
                pgid=decoy.pid,
                start_time=decoy_start + 1,
                boot_id=_boot_id(),
            ),
        ]
        (work / "tasks.json").write_text(
            json.dumps({"version": 1, "tasks": [asdict(r) for r in records]})
        )

        async def main() -> FakeServer:
            async with fake_server() as server:
                async with running_agent(server.url, work):
                    await until(
                        lambda: all(server.exit_of(TaskKey(j, 1, 0)) for j in (5, 6, 7)),
                        "reports of the previous life",
                    )
                    await until(lambda: state_tasks(work) == [], "acknowledgement")
            return server

        server = asyncio.run(main())
        assert left.wait(timeout=5) == -signal.SIGKILL
        assert decoy.poll() is None, "a process group that is not ours was killed"
        assert not alive(child)
        for job, code, reason in ((5, -9, "agent restarted"), (6, 5, None), (7, -9, None)):
            report = server.exit_of(TaskKey(job, 1, 0))
            assert report is not None and report["exit_code"] == code
            if reason is not None:
                assert report["reason"] == reason
        # The restarted agent never ran the tasks again.
        assert not any(r["state"] == "running" for r in server.reports)
    finally:
        for p in (left, decoy):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        if left.stdout is not None:
            left.stdout.close()


def test_a_cancelled_agent_still_stops_its_tasks(tmp_path: Path) -> None:
    work = tmp_path / "agent"
    key = TaskKey(15, 1, 0)

    async def main() -> None:
        async with fake_server() as server:
            server.assign("node-a", assignment(15, command=[PY, "-c", SPAWNER]))
            agent = Agent(server.url, TOKEN, name="node-a", work_dir=work, **FAST, nvml=no_gpus())
            run = asyncio.create_task(agent.run())
            await until(lambda: "ready" in server.output(15), "the task")
            leader = server.reports_of(key)[0]["pid"]
            child = int((work / "tasks" / str(key) / "child.pid").read_text())
            run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(run, 5)
            assert not alive(leader) and not alive(child)
            # A cancelled agent does not wait for the server, but loses no exit: what no
            # heartbeat answer acknowledged is in the state file for the next start.
            acked = any(
                t["state"] == "exited" and TaskKey.of(t) == key
                for hb in server.heartbeats
                for t in hb["tasks"]
            )
        kept = [(t["job_id"], t["exit_code"], t["reason"]) for t in state_tasks(work)]
        assert kept == [(15, -signal.SIGTERM, "agent stopped")] or (acked and kept == [])

    asyncio.run(main())


AGENT_MAIN = textwrap.dedent(
    """
    import asyncio, logging, sys
    from pathlib import Path
    from cplat.runtime.agent import run_agent
    logging.basicConfig(level=logging.INFO)
    asyncio.run(
        run_agent(sys.argv[1], sys.argv[2], "node-p", Path(sys.argv[3]), 0.05, task_user="self")
    )
    """
)


def tethers_of(pid: int) -> list[int]:
    """The tether processes (cplat.runtime.tether) started by process ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and b"tether.py" in cmdline:
            found.append(int(entry))
    return found


def test_run_agent_process_crash_then_clean_stop(tmp_path: Path) -> None:
    """A SIGKILLed agent's task is killed by the next agent; SIGTERM stops tasks cleanly."""
    work = tmp_path / "agent"
    crashed, later = TaskKey(20, 1, 0), TaskKey(21, 1, 0)

    async def main() -> None:
        async with fake_server() as server:
            argv = [PY, "-c", AGENT_MAIN, server.url, TOKEN, str(work)]
            first = await asyncio.create_subprocess_exec(*argv)
            server.assign("node-p", assignment(20, command=[PY, "-c", SPAWNER]))
            await until(lambda: "ready" in server.output(20), "the first life's task", 15)
            leader = server.reports_of(crashed)[0]["pid"]
            child = int((work / "tasks" / str(crashed) / "child.pid").read_text())
            # Its tether would stop the task with the agent (tests/test_lease.py); without it
            # the task outlives the agent, and the next agent must kill what is left.
            for pid in tethers_of(first.pid):
                os.kill(pid, signal.SIGKILL)
            first.kill()
            await first.wait()
            assert alive(leader) and alive(child), "the task should outlive its agent"

            second = await asyncio.create_subprocess_exec(*argv)
            await until(lambda: server.exit_of(crashed), "the crashed task's report", 15)
            report = server.exit_of(crashed)
            assert report is not None
            assert (report["exit_code"], report["reason"]) == (-9, "agent restarted")
            await until(lambda: not alive(leader) and not alive(child), "the leftovers killed")

            server.assign("node-p", assignment(21, command=[PY, "-c", SPAWNER]))
            await until(lambda: "ready" in server.output(21), "the second life's task", 15)
            second.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(second.wait(), 15) == 0
            report = server.exit_of(later)
            assert report is not None
            assert (report["exit_code"], report["reason"]) == (-signal.SIGTERM, "agent stopped")
            assert state_tasks(work) == []

    asyncio.run(main())


def test_server_away_then_back_and_forgetting_the_node(tmp_path: Path) -> None:
    port = free_port()
    key = TaskKey(30, 1, 0)

    async def main() -> None:
        server = FakeServer()
        url = f"http://127.0.0.1:{port}"
        try:
            async with running_agent(url, tmp_path / "agent"):
                await asyncio.sleep(0.4)  # nobody listens: the agent must keep trying
                await server.start(port)
                await until(lambda: server.registrations, "registration once the server is up")
                server.assign(
                    "node-a",
                    assignment(30, command="echo before; sleep 0.4; echo after; exit 4"),
                )
                await until(lambda: "before" in server.output(30), "output before the outage")
                await server.stop()
                await asyncio.sleep(0.8)  # the task ends while the server is away
                server.forget()  # it comes back without the node
                await server.start(port)
                await until(lambda: server.exit_of(key), "the exit report after the outage")
                assert len(server.registrations) == 2
                hb = len(server.heartbeats)
                await until(lambda: len(server.heartbeats) > hb + 2, "heartbeats resuming")
        finally:
            await server.stop()
        report = server.exit_of(key)
        assert report is not None and report["exit_code"] == 4
        assert server.output(30) == "before\nafter\n"

    asyncio.run(main())


def test_rejected_registration_and_token_are_fatal(tmp_path: Path) -> None:
    async def main() -> None:
        async with fake_server() as server:
            server.reject_registration = (400, "gpus[0].model: unknown field")
            agent = Agent(server.url, TOKEN, name="n", work_dir=tmp_path / "a", nvml=no_gpus())
            with pytest.raises(AgentError, match=r"HTTP 400: gpus\[0\]\.model: unknown field"):
                await asyncio.wait_for(agent.run(), 5)
            agent = Agent(server.url, "wrong", name="n", work_dir=tmp_path / "b", nvml=no_gpus())
            with pytest.raises(AgentAuthError, match="cluster-admin token"):
                await asyncio.wait_for(agent.run(), 5)

    asyncio.run(main())


def test_output_is_batched_ordered_and_bounded(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        for i in range(3000):
            print(f"line {i:05d} " + "x" * 40)
        sys.stdout.write("L" * 200000)  # one line far longer than a batch, no newline
        sys.stdout.flush()
        """
    )
    expected = "".join(f"line {i:05d} " + "x" * 40 + "\n" for i in range(3000)) + "L" * 200000

    async def main() -> None:
        async with fake_server() as server:
            server.assign("node-a", assignment(50, command=[PY, "-c", script]))
            async with running_agent(server.url, tmp_path / "agent"):
                await until(lambda: server.exit_of(TaskKey(50, 1, 0)), "the exit")
            assert server.output(50) == expected
            assert len(server.log_bodies) < 3000 // 10
            assert max(server.log_bodies) <= 64 * 1024 + 4096  # batch plus JSON framing

    asyncio.run(main())


def test_log_shipper_keeps_order_and_the_newest_output_through_an_outage() -> None:
    async def main() -> None:
        stored: list[tuple[int, list[dict[str, Any]]]] = []
        down = True

        async def post(job: int, chunks: list[dict[str, Any]]) -> bool:
            if down:
                raise _UnreachableError("connection refused")
            stored.append((job, [dict(c) for c in chunks]))
            return True

        lines = [f"{i:02d}" + "." * 27 + "\n" for i in range(20)]  # 30 bytes each
        # Room for everything: a failed send is put back in order, ahead of newer output.
        roomy = _LogShipper(post, flush_interval=60, flush_bytes=64, cap=10_000, backoff_max=0.1)
        for i, line in enumerate(lines[:6]):
            roomy.add(TaskKey(1, 1, i % 2), "stdout", line)
            if i == 3:
                assert not await roomy.flush()
        down = False
        assert await roomy.flush()
        assert "".join(c["data"] for _, chunks in stored for c in chunks) == "".join(lines[:6])
        stored.clear()
        down = True

        shipper = _LogShipper(post, flush_interval=60, flush_bytes=64, cap=200, backoff_max=0.1)
        for i, line in enumerate(lines):
            shipper.add(TaskKey(1, 1, i % 2), "stdout", line)
            if i == 3:
                assert not await shipper.flush()  # failed sends are put back, not lost
        down = False
        assert await shipper.flush()
        # A batch stays within flush_bytes unless it is one chunk (a note may be longer).
        assert all(
            len(chunks) == 1 or sum(len(c["data"]) for c in chunks) <= 64 for _, chunks in stored
        )
        got = [c for _, chunks in stored for c in chunks]
        # Notes first (one per rank that lost output), then the newest lines in order.
        notes = [c for c in got if c["stream"] == "stderr"]
        assert sorted(c["rank"] for c in notes) == [0, 1]
        dropped = sum(int(c["data"].split()[2]) for c in notes)
        kept = "".join(c["data"] for c in got if c["stream"] == "stdout")
        assert dropped + len(kept) == 600 and len(kept) <= 200
        assert kept == "".join(lines)[-len(kept) :]

    asyncio.run(main())


# --------------------------------------------------------------------------------------------
# task_env and friends, without an agent
# --------------------------------------------------------------------------------------------


def test_task_env_layers_and_defaults(tmp_path: Path) -> None:
    env = task_env(
        {"job_id": 7, "attempt": 1, "rank": 0, "world_size": 1, "env": {"PATH": "/job/bin"}},
        {"PATH": "/usr/bin", "HOME": "/home/a", "CPLAT_TOKEN": "admin", "RANK": "5"},
        "http://s:8080",
        None,
        tmp_path,
    )
    assert env["PATH"] == "/job/bin" and env["HOME"] == "/home/a"
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["RANK"] == "0"
    assert "CPLAT_TOKEN" not in env and "CPLAT_RESUME_FROM" not in env
    # Names cplat manages stay unset when cplat has nothing for them: a job cannot fake them.
    forged = task_env(
        {
            "job_id": 7,
            "attempt": 1,
            "rank": 0,
            "world_size": 1,
            "env": {"CPLAT_TOKEN": "forged", "CPLAT_RESUME_FROM": "s3://other", "CPLAT_X": "1"},
        },
        {},
        "http://s:8080",
        None,
        tmp_path,
    )
    assert "CPLAT_TOKEN" not in forged and "CPLAT_RESUME_FROM" not in forged
    assert forged["CPLAT_X"] == "1"
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("127.0.0.1", "29500")
    assert Path(env["CPLAT_HOSTFILE"]).read_text() == ""
    assert task_argv("echo hi") == ["/bin/sh", "-c", "echo hi"]
    for bad in ([], "", [""], None, [1, 2]):
        with pytest.raises(LaunchError):
            task_argv(bad)


def test_state_file_is_replaced_atomically(tmp_path: Path) -> None:
    async def main() -> None:
        launcher = Launcher(tmp_path, "http://s", lambda *a: None)
        proc = await launcher.launch(assignment(8, command=[PY, "-c", "pass"]))
        saved = state_tasks(tmp_path)
        assert [(t["job_id"], t["state"], t["pid"]) for t in saved] == [(8, "running", proc.pid)]
        assert saved[0]["pgid"] == proc.pid and saved[0]["start_time"] is not None
        code = await proc.wait()
        launcher.set_exited(proc.key, code, None)
        assert [(t["state"], t["exit_code"]) for t in state_tasks(tmp_path)] == [("exited", 0)]
        launcher.forget([proc.key])
        assert state_tasks(tmp_path) == []
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "tasks",
            "tasks.checkpoints",
            "tasks.json",
        ]
        # The task wrote no checkpoint: its job's empty folder goes with it.
        assert list((tmp_path / "tasks.checkpoints").iterdir()) == []

    asyncio.run(main())


# --------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------


def test_discovery_with_fake_nvml(tmp_path: Path) -> None:
    nvml = two_a100s()
    node = discover("gpu-7", nvml=nvml, root=sysfs_root(tmp_path))
    assert node["name"] == "gpu-7" and node["hostname"] == socket.gethostname()
    assert nvml.initialized == 0, "NVML must be shut down after a one-shot discovery"
    g0, g1 = node["gpus"]
    assert g0 == {
        "index": 0,
        "uuid": "GPU-aaaa",
        "model": "A100-SXM4-80GB",
        "memory_mib": 81920,
        "mig_mode": True,
        "mig_instances": [
            {"gi_id": 1, "ci_id": 0, "uuid": "MIG-1111", "profile": "3g.40gb", "memory_mib": 40192},
            {"gi_id": 5, "ci_id": 0, "uuid": "MIG-2222", "profile": "1g.10gb", "memory_mib": 9728},
        ],
        "nvlink_peers": [1],
        "numa_node": 0,
        "healthy": True,
        "reason": "",
    }
    assert g1["mig_mode"] is False and g1["mig_instances"] == []
    assert g1["nvlink_peers"] == [0]
    assert g1["numa_node"] == 1  # from sysfs: NVML has no NUMA query here
    assert g1["healthy"] is False and g1["reason"] == "2 uncorrected ECC errors"
    # Without the sysfs entry the NUMA node is unknown.
    assert discover(nvml=two_a100s(), root=tmp_path / "empty")["gpus"][1]["numa_node"] == -1


def test_nvswitch_peers_and_lost_gpus() -> None:
    switched = [
        FakeGpu(
            index=i,
            uuid=f"GPU-{i}",
            name="NVIDIA H100 80GB HBM3",
            bus_id=f"00000000:{i + 1:02X}:00.0",
            memory_mib=81559,
            switch_links={0, 1, 2},
        )
        for i in range(3)
    ]
    switched.append(
        FakeGpu(index=3, uuid="GPU-3", name="x", bus_id="00000000:09:00.0", memory_mib=1, lost=True)
    )
    gpus = discover(nvml=FakeNvml(switched))["gpus"]
    assert [g["nvlink_peers"] for g in gpus[:3]] == [[1, 2], [0, 2], [0, 1]]
    assert gpus[0]["model"] == "H100 80GB HBM3"
    assert gpus[3]["index"] == 3 and gpus[3]["healthy"] is False
    assert gpus[3]["nvlink_peers"] == [] and gpus[3]["memory_mib"] == 0


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"temperature": 90}, "temperature 90 C at or above slowdown threshold 85 C"),
        ({"pending_retirement": True}, "page retirement pending (needs a GPU reset)"),
        ({"remapped": (0, 1, 0, 1)}, "row remapping failed"),
        ({"remapped": (0, 1, 1, 0)}, "row remapping pending (needs a GPU reset)"),
        ({"remapped": None, "pending_retirement": False, "temperature": 84}, None),
    ],
)
def test_gpu_health_checks(change: dict[str, Any], reason: str | None) -> None:
    gpu = FakeGpu(index=0, uuid="GPU-z", name="NVIDIA A10", bus_id=BUS0, memory_mib=24576)
    for k, v in change.items():
        setattr(gpu, k, v)
    nvml = FakeNvml([gpu])
    nvml.nvmlInit()
    expected = {"index": 0, "healthy": reason is None, "reason": reason or ""}
    assert gpu_health([gpu], nvml=nvml) == [expected]


def test_xid_events_mark_a_gpu_unhealthy_until_restart() -> None:
    nvml = two_a100s()
    nvml.gpus[1].ecc_uncorrected = 0
    with GpuMonitor(nvml) as mon:
        assert nvml.registered == {0, 1}
        assert [h["healthy"] for h in mon.health()] == [True, True]
        nvml.xid(0, 13)  # an application fault: not the device's
        nvml.xid(1, 79)  # fallen off the bus
        assert [h["reason"] for h in mon.health()] == ["", "Xid 79"]
        assert [h["reason"] for h in mon.health()] == ["", "Xid 79"], "Xids are sticky"
    assert nvml.initialized == 0


def test_no_nvml_means_no_gpus() -> None:
    broken = FakeNvml([], init_error=FakeNvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    node = discover(nvml=broken)
    assert node["gpus"] == [] and node["cpu_milli"] > 0 and node["memory_mib"] > 0
    with GpuMonitor(broken) as mon:
        assert mon.health() == [] and mon.devices() == []
    # The real binding on this machine: whatever NVML says, discovery does not raise.
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        assert discover()["gpus"] == []
    else:
        pynvml.nvmlShutdown()
        assert isinstance(discover()["gpus"], list)


def test_fake_nvml_matches_pynvml() -> None:
    pynvml = pytest.importorskip("pynvml")
    for name in dir(FakeNvml):
        if name.startswith("nvml") and callable(getattr(FakeNvml, name)):
            assert callable(getattr(pynvml, name, None)), f"pynvml has no {name}"
        elif name.startswith(("NVML_", "nvmlEventType")):
            assert getattr(pynvml, name) == getattr(FakeNvml, name), name


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_limits_cap_cpu_and_memory(tmp_path: Path) -> None:
    cpus = len(os.sched_getaffinity(0)) * 1000
    v2 = tmp_path / "v2"
    _write(v2 / "proc/self/cgroup", "0::/kubepods/pod1/ctr\n")
    _write(v2 / "proc/meminfo", "MemTotal:       16384000 kB\nMemFree: 1 kB\n")
    _write(v2 / "sys/fs/cgroup/kubepods/pod1/ctr/cpu.max", "150000 100000\n")
    _write(v2 / "sys/fs/cgroup/kubepods/pod1/ctr/memory.max", "max\n")
    _write(v2 / "sys/fs/cgroup/kubepods/pod1/cpu.max", "max 100000\n")
    _write(v2 / "sys/fs/cgroup/kubepods/pod1/memory.max", f"{2048 * MIB}\n")
    assert cpu_milli(v2) == min(cpus, 1500)
    assert memory_mib(v2) == 2048

    v1 = tmp_path / "v1"
    _write(v1 / "proc/self/cgroup", "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    _write(v1 / "proc/meminfo", "MemTotal:       16384000 kB\n")
    _write(v1 / "sys/fs/cgroup/cpu/docker/abc/cpu.cfs_quota_us", "50000\n")
    _write(v1 / "sys/fs/cgroup/cpu/docker/abc/cpu.cfs_period_us", "100000\n")
    _write(v1 / "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes", "9223372036854771712\n")
    assert cpu_milli(v1) == min(cpus, 500)
    assert memory_mib(v1) == 16000

    bare = tmp_path / "bare"
    _write(bare / "proc/meminfo", "MemTotal:       16384000 kB\n")
    assert cpu_milli(bare) == cpus and memory_mib(bare) == 16000
