"""Tasks cannot take over the platform: real jobs through a real agent try every escape.

A real server and a real agent (root, default dynamic task users, cgroups) run jobs that try
to read the signing secret, the store, the agent's token and another project's environment
and folder, to use more memory, processes and CPU than they asked for, and to leave a daemon
behind; each attempt must fail. Then the same with cgroups turned off (rlimits), fixed and
mapped accounts, a devices allow-list on a fake cgroup tree, and assignments the agent cannot
launch. Jobs are shell scripts and the system's python3: task users cannot reach the test's
own interpreter or its temporary directories, which is the point.

Skips only where the machine cannot do it: not root (no user switch, no cgroup), or no
cgroup hierarchy with memory, cpu and pids controllers.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402

from cplat.runtime.agent import Agent  # noqa: E402
from cplat.runtime.discovery import GpuMonitor  # noqa: E402
from cplat.runtime.isolation import (  # noqa: E402
    CPU_PERIOD_US,
    DEFAULT_UID_RANGE,
    Cgroups,
    Isolation,
    IsolationSettings,
    Limits,
    _cgroup_mounts,
    _limits_of,
    _own_cgroups,
    _under,
    device_rules,
    load_isolation_settings,
)
from cplat.runtime.launch import Launcher, LaunchError, TaskKey  # noqa: E402
from cplat.testing.service import Service, running_service  # noqa: E402
from cplat_server.auth import create_token  # noqa: E402
from cplat_server.keys import SECRET  # noqa: E402

ROOT = os.geteuid() == 0
PY3 = "/usr/bin/python3"
PROC = Path("/proc")
needs_root = pytest.mark.skipif(not ROOT, reason="switching users and creating cgroups need root")


def _v1_usable() -> str | None:
    """Why cgroup v1 (memory, cpu, pids) cannot be used here, or None."""
    mounts, _ = _cgroup_mounts(PROC)
    missing = [c for c in ("memory", "cpu", "pids") if c not in mounts]
    if missing:
        return f"no cgroup v1 {', '.join(missing)} controller(s) mounted"
    own, _ = _own_cgroups(PROC)
    for ctrl in ("memory", "cpu", "pids"):
        if not os.access(_under(mounts[ctrl], own.get(ctrl)), os.W_OK):
            return f"the {ctrl} cgroup is not writable"
    return None


def _v2_usable() -> bool:
    _, mount = _cgroup_mounts(PROC)
    if mount is None:
        return False
    ctrls = (mount[0] / "cgroup.controllers").read_text().split() if mount else []
    return {"cpu", "memory", "pids"} <= set(ctrls)


CGROUP_WHY = None if ROOT and (_v2_usable() or _v1_usable() is None) else _v1_usable()
needs_cgroup = pytest.mark.skipif(
    not ROOT or CGROUP_WHY is not None, reason=f"no usable cgroup: {CGROUP_WHY or 'not root'}"
)
needs_py3 = pytest.mark.skipif(not os.access(PY3, os.X_OK), reason=f"{PY3} is missing")


@pytest.fixture
def base() -> Iterator[Path]:
    """A world-traversable directory, as an operator's ``/srv/cplat`` would be.

    pytest's tmp_path sits under a 0700 directory, which would stop task users on its own;
    here only what cplat does stands between a task and the files.
    """
    path = Path(tempfile.mkdtemp(prefix="cplat-iso-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _tokens(svc: Service) -> SimpleNamespace:
    secret = svc.app[SECRET]
    return SimpleNamespace(
        admin=create_token(secret, "root", "system", "admin", cluster_admin=True),
        a=create_token(secret, "ana", "alpha", "member"),
        b=create_token(secret, "ben", "beta", "member"),
        carol=create_token(secret, "carol", "alpha", "member"),
        mapped=create_token(secret, "dan", "mapped", "member"),
    )


async def _logs(svc: Service, job: int, tok: str) -> str:
    status, body = await svc.call("GET", f"/v1/jobs/{job}/logs", tok)
    assert status == 200, body
    return "".join(c["data"] for c in body["logs"])


async def _until_output(svc: Service, job: int, tok: str, text: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while True:
        out = await _logs(svc, job, tok)
        if text in out:
            return out
        if time.monotonic() > deadline:
            _, view = await svc.call("GET", f"/v1/jobs/{job}", tok)
            raise AssertionError(f"job {job}: no {text!r} in {out!r} ({view})")
        await asyncio.sleep(0.1)


async def _submit(svc: Service, tok: str, name: str, command: str, **extra: Any) -> int:
    res = {"cpu_milli": 50, "memory_mib": 256, **extra.pop("resources", {})}
    job = await svc.submit(
        tok, name=name, command=command, tasks={"resources": res}, max_runtime=120, **extra
    )
    return int(job["id"])


def _attempts(lines: str) -> dict[str, str]:
    """``LEAK x`` / ``denied x`` lines of a probe script -> {x: verdict}."""
    out = {}
    for line in lines.splitlines():
        verdict, _, what = line.partition(" ")
        if verdict in ("LEAK", "denied"):
            out[what] = verdict
    return out


def _probe(paths: dict[str, str], cmd: str = "cat") -> str:
    """A shell script that tries ``cmd`` on each path and prints LEAK or denied per name."""
    return "".join(
        f'if {cmd} "{p}" >/dev/null 2>&1; then echo "LEAK {n}"; else echo "denied {n}"; fi\n'
        for n, p in paths.items()
    )


def _cgroup_dir(ctrl: str, agent: str, key: str) -> Path:
    """Where the agent (started from this process, so in its cgroups) puts a task's cgroup."""
    mounts, v2 = _cgroup_mounts(PROC)
    if ctrl == "unified":
        assert v2 is not None
        return v2[0] / "cplat" / agent / key
    own, _ = _own_cgroups(PROC)
    return _under(mounts[ctrl], own.get(ctrl)) / "cplat" / agent / key


def _alive(pid: int) -> bool:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    return text[text.rfind(")") + 2] != "Z"


@contextlib.asynccontextmanager
async def _standalone_agent(
    url: str, token: str, name: str, work: Path, *flags: str
) -> AsyncIterator[subprocess.Popen[bytes]]:
    """``cplat agent`` as its own process, its cluster-admin token in its environment."""
    log = os.open(work.parent / f"{name}.log", os.O_WRONLY | os.O_CREAT, 0o600)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CPLAT_TOKEN": token}
    argv = [sys.executable, "-m", "cplat.cli", "agent", "--server", url, "--name", name]
    argv += ["--work-dir", str(work), "--heartbeat", "0.5", *flags]
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log, start_new_session=True)
    os.close(log)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # An agent that had to be killed leaves its (empty) cgroup directories behind.
        for ctrl in ("memory", "cpu", "cpuacct", "pids", "devices", "unified"):
            with contextlib.suppress(OSError, AssertionError, KeyError):
                _cgroup_dir(ctrl, name, "").rmdir()


async def _registered(svc: Service, tok: str, name: str, proc: subprocess.Popen[bytes]) -> Any:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status, node = await svc.call("GET", f"/v1/nodes/{name}", tok)
        if status == 200:
            return node
        assert proc.poll() is None, "the agent exited"
        await asyncio.sleep(0.1)
    raise AssertionError(f"agent {name} did not register")


def _cpu_sample(agent: str, key: str) -> tuple[int, int, int]:
    """(usage in µs, periods, throttled periods) of a task's cgroup."""
    if (_cgroup_dir("unified", agent, key) / "cpu.stat").exists():
        text = (_cgroup_dir("unified", agent, key) / "cpu.stat").read_text()
        vals = dict(line.split() for line in text.splitlines())
        return int(vals["usage_usec"]), int(vals["nr_periods"]), int(vals["nr_throttled"])
    stats = (_cgroup_dir("cpu", agent, key) / "cpu.stat").read_text()
    vals = dict(line.split()[:2] for line in stats.splitlines())
    usage_ns = int((_cgroup_dir("cpuacct", agent, key) / "cpuacct.usage").read_text())
    return usage_ns // 1000, int(vals["nr_periods"]), int(vals["nr_throttled"])


# --------------------------------------------------------------------------------------------
# The escapes, against the default: dynamic users and cgroups
# --------------------------------------------------------------------------------------------


@needs_cgroup
@needs_py3
def test_tasks_cannot_reach_the_platform_each_other_or_more_than_they_asked(base: Path) -> None:
    name = f"iso-{secrets.token_hex(3)}"
    data, work, task_root = base / "data", base / "agent", base / "tasks"
    password = f"hunter2-{secrets.token_hex(8)}"
    devices = base / "dev"
    devices.mkdir()
    os.mknod(devices / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    # A device every user may open were it not for the allow-list (fuse: harmless to open).
    os.mknod(devices / "fuse", 0o666 | stat.S_IFCHR, os.makedev(10, 229))
    for node in ("null", "fuse"):
        os.chmod(devices / node, 0o666)
    try:
        os.close(os.open(devices / "fuse", os.O_RDWR))
        root_errno = 0
    except OSError as err:
        root_errno = err.errno or -1

    secret_text = "unset"

    async def main() -> None:
        async with running_service(base, data_dir=data, jwt_secret="") as svc:
            tok = _tokens(svc)
            assert (data / "jwt-secret").is_file() and (data / "cplat.db").is_file()
            async with _standalone_agent(
                svc.url, tok.admin, name, work, "--task-root", str(task_root), "--pids-max", "64"
            ) as agent:
                node = await _registered(svc, tok.admin, name, agent)
                iso = node["isolation"]
                assert iso["task_user"] == "dynamic" and iso["cgroup"] in ("v1", "v2"), iso
                # v2 restricts devices only where the kernel lets the agent attach a device
                # program (tests/test_devices_bpf.py); v1 always has the devices controller.
                assert iso["devices_restricted"] or iso["cgroup"] == "v2"
                nonlocal secret_text
                secret_text = (data / "jwt-secret").read_text().strip()
                await _escapes(svc, tok, agent.pid, iso["cgroup"])

    async def _escapes(svc: Service, tok: SimpleNamespace, agent_pid: int, mode: str) -> None:
        # Project B's long task, with a password in its environment.
        b_job = await _submit(
            svc,
            tok.b,
            "b-secret-holder",
            "echo pid $$ uid $(id -u); exec sleep 60",
            env={"DB_PASSWORD": password},
        )
        probes = {
            "secret": _probe(
                {
                    "rel3": "../../../jwt-secret",
                    "rel4": "../../../../jwt-secret",
                    "rel-data": "../../data/jwt-secret",
                    "abs": f"{data}/jwt-secret",
                    "db": f"{data}/cplat.db",
                    "state": f"{work}/tasks.json",
                }
            )
            + _probe({"ls-data": str(data), "ls-work": str(work)}, cmd="ls"),
            "environ": _probe(
                {"ppid": "/proc/$PPID/environ", "agent": f"/proc/{agent_pid}/environ"}
            )
            + 'echo "whoami $(id -u) parent $PPID"\n',
            "leftover": "setsid sleep 300 >/dev/null 2>&1 & echo daemon $!; sleep 0.2",
            "pids": f"""{PY3} -c '
import os, time
n = 0
try:
    while n < 500:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        n += 1
    print("unbounded", n)
except OSError as err:
    print("blocked after", n, err.errno)
'""",
        }
        if mode == "v1":
            probes["devices"] = f"""head -c1 {devices}/null && echo null-ok
{PY3} -c '
import os
try:
    os.close(os.open("{devices}/fuse", os.O_RDWR))
    print("fuse opened")
except OSError as err:
    print("fuse errno", err.errno)
'"""
        jobs = {k: await _submit(svc, tok.a, k, script) for k, script in probes.items()}
        # A working directory inside the data dir: entered as the task's user, so refused.
        inside = await _submit(svc, tok.a, "workdir", "cat jwt-secret", workdir=str(data))
        hog = await _submit(
            svc,
            tok.a,
            "hog",
            f'{PY3} -c \'x = b"a" * (400 << 20); print("allocated")\'',
            resources={"memory_mib": 32},
        )
        busy = await _submit(
            svc, tok.a, "busy", "while :; do :; done", resources={"cpu_milli": 500}
        )

        # Project A looks for B's environment and folder while B runs.
        out_b = await _until_output(svc, b_job, tok.b, "uid")
        b_pid, b_uid = int(out_b.split()[1]), int(out_b.split()[3])
        b_key = f"{b_job}.1.0"
        b_dir = task_root / b_key
        st = b_dir.stat()  # the path A tries is the real one
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (b_uid, 0o700)
        assert stat.S_IMODE(task_root.stat().st_mode) == 0o711
        snoop = await _submit(
            svc,
            tok.a,
            "snoop",
            f"test -d /proc/{b_pid} && echo sees-b\n"
            + _probe({"b-environ": f"/proc/{b_pid}/environ", "b-hostfile": f"{b_dir}/hostfile"})
            + _probe({"ls-root": str(task_root), "ls-b": str(b_dir)}, cmd="ls")
            + "for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' <$f 2>/dev/null; done"
            + f" | grep -q {password} && echo 'LEAK scan' || echo 'denied scan'\n"
            + "echo uid $(id -u)\n",
        )

        finished = {}
        for label, job in [*jobs.items(), ("hog", hog), ("snoop", snoop)]:
            finished[label] = await svc.wait(job, tok.a, timeout=40)
        outputs = {label: await _logs(svc, job, tok.a) for label, job in jobs.items()}
        outputs["snoop"] = await _logs(svc, snoop, tok.a)

        secret = _attempts(outputs["secret"])
        tried = ("rel3", "rel4", "rel-data", "abs", "db", "state", "ls-data", "ls-work")
        assert secret == dict.fromkeys(tried, "denied"), outputs["secret"]

        environ = _attempts(outputs["environ"])
        assert environ == {"ppid": "denied", "agent": "denied"}, outputs["environ"]
        words = outputs["environ"].split("whoami ")[1].split()
        task_uid = int(words[0])
        assert words[1:3] == ["parent", str(agent_pid)], words
        assert task_uid not in (0, os.geteuid())
        assert DEFAULT_UID_RANGE[0] <= task_uid <= DEFAULT_UID_RANGE[1]

        snooped = _attempts(outputs["snoop"])
        assert "sees-b" in outputs["snoop"], outputs["snoop"]
        assert snooped == dict.fromkeys(
            ("b-environ", "b-hostfile", "ls-root", "ls-b", "scan"), "denied"
        ), outputs["snoop"]
        snoop_uid = int(outputs["snoop"].split("uid ")[-1].split()[0])
        assert len({snoop_uid, b_uid, task_uid}) == 3

        entered = await svc.wait(inside, tok.a, timeout=40)
        assert entered["state"] == "FAILED", entered
        assert "working directory" in entered["reason"], entered
        assert secret_text not in await _logs(svc, inside, tok.a)

        assert finished["hog"]["state"] == "FAILED", finished["hog"]
        assert "oom_killed" in finished["hog"]["reason"], finished["hog"]
        assert "allocated" not in await _logs(svc, hog, tok.a)
        _, events = await svc.call("GET", f"/v1/jobs/{hog}/events", tok.a)
        assert any("oom_killed" in e["message"] for e in events["events"]), events

        assert "blocked after" in outputs["pids"], outputs["pids"]
        assert int(outputs["pids"].split()[2]) < 64

        daemon = int(outputs["leftover"].split()[1])
        deadline = time.monotonic() + 10
        while _alive(daemon):
            assert time.monotonic() < deadline, "the task's daemon outlived it"
            await asyncio.sleep(0.1)

        if mode == "v1":
            assert "null-ok" in outputs["devices"], outputs["devices"]  # allowed, and works
            # Outside the task's cgroup the node opens (or fails otherwise); inside, the
            # allow-list refuses it.
            if root_errno != errno.EPERM:
                assert f"fuse errno {errno.EPERM}" in outputs["devices"], outputs["devices"]

        # The busy loop gets half a core: measured once the other jobs are done, it is
        # throttled and uses at most its quota. (On a machine so busy that the loop gets less
        # than its quota, no throttling shows; the bound and the quota file still must hold.)
        key = f"{busy}.1.0"
        if mode == "v1":
            quota_file = _cgroup_dir("cpu", name, key) / "cpu.cfs_quota_us"
            assert quota_file.read_text().strip() == str(CPU_PERIOD_US // 2)
        else:
            cpu_max = _cgroup_dir("unified", name, key) / "cpu.max"
            assert cpu_max.read_text().split() == [str(CPU_PERIOD_US // 2), str(CPU_PERIOD_US)]
        quota = CPU_PERIOD_US // 2
        windows = []
        for _ in range(3):
            first = _cpu_sample(name, key)
            await asyncio.sleep(1.0)
            used, periods, throttled = (
                b - a for a, b in zip(first, _cpu_sample(name, key), strict=True)
            )
            assert 0 < used <= quota * periods * 1.1 + CPU_PERIOD_US, (used, periods, quota)
            windows.append((used, periods, throttled))
            if throttled > 0:
                break
        assert any(t > 0 or u < 0.8 * quota * p for u, p, t in windows), windows

        for job, t in ((b_job, tok.b), (busy, tok.a)):
            await svc.call("POST", f"/v1/jobs/{job}/cancel", t)
            assert (await svc.wait(job, t, timeout=30))["state"] == "CANCELLED"
        # The agent's cgroups and the task folders are gone with the tasks.
        await _until_gone(task_root / b_key)
        assert not _cgroup_dir("pids" if mode == "v1" else "unified", name, b_key).exists()

    asyncio.run(main())


async def _until_gone(path: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while path.exists():
        assert time.monotonic() < deadline, f"{path} was not removed"
        await asyncio.sleep(0.1)


# --------------------------------------------------------------------------------------------
# Without cgroups: rlimits; fixed and mapped accounts
# --------------------------------------------------------------------------------------------


@needs_root
@needs_py3
def test_rlimit_fallback_and_mapped_accounts(base: Path) -> None:
    name = f"iso-rl-{secrets.token_hex(3)}"
    settings = IsolationSettings(
        cgroup="none",
        pids_max=64,
        task_root=base / "tasks",
        project_users={"mapped": "nobody"},
        user_map={"carol": "nobody"},
    )

    async def main() -> None:
        async with running_service(base, data_dir=base / "data") as svc:
            tok = _tokens(svc)
            await svc.start_agent(name, base / "agent", task_user=None, isolation=settings)
            _, node = await svc.call("GET", f"/v1/nodes/{name}", tok.admin)
            assert node["isolation"] == {
                "task_user": "dynamic",
                "user_mapping": True,
                "cgroup": "rlimits",
                "devices_restricted": False,
            }
            hog = await _submit(
                svc,
                tok.a,
                "hog",
                f'{PY3} -c \'x = b"a" * (400 << 20); print("allocated")\'',
                resources={"memory_mib": 32},
            )
            fork = await _submit(
                svc,
                tok.a,
                "fork",
                f"""{PY3} -c '
import os, time
n = 0
try:
    while n < 500:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        n += 1
except OSError as err:
    print("blocked after", n)
'
setsid sleep 300 >/dev/null 2>&1 & echo daemon $!""",
            )
            whoami = "echo user $(id -un 2>/dev/null || id -u)"
            own = await _submit(svc, tok.a, "own", whoami)
            by_project = await _submit(svc, tok.mapped, "mapped", whoami)
            by_user = await _submit(svc, tok.carol, "carol", whoami)

            done = await svc.wait(hog, tok.a, timeout=30)
            assert done["state"] == "FAILED" and "oom_killed" not in done["reason"], done
            out = await _logs(svc, hog, tok.a)
            assert "MemoryError" in out and "allocated" not in out, out
            assert (await svc.wait(fork, tok.a, timeout=30))["state"] == "SUCCEEDED"
            out = await _logs(svc, fork, tok.a)
            assert "blocked after" in out and int(out.split()[2]) < 64, out
            daemon = int(out.split("daemon ")[1].split()[0])
            deadline = time.monotonic() + 10
            while _alive(daemon):  # it left the process group; its uid gave it away
                assert time.monotonic() < deadline, "the task's daemon outlived it"
                await asyncio.sleep(0.1)
            users = {}
            for job, t in ((own, tok.a), (by_project, tok.mapped), (by_user, tok.carol)):
                assert (await svc.wait(job, t, timeout=30))["state"] == "SUCCEEDED"
                users[job] = (await _logs(svc, job, t)).split()[1]
            assert users[by_project] == users[by_user] == "nobody"
            uid = int(users[own])
            assert DEFAULT_UID_RANGE[0] <= uid <= DEFAULT_UID_RANGE[1]

    asyncio.run(main())


# --------------------------------------------------------------------------------------------
# Units: the devices allow-list, limits on fake cgroup trees, settings, GPU minors
# --------------------------------------------------------------------------------------------

PROC_DEVICES = """Character devices:
  1 mem
  5 /dev/tty
136 pts
195 nvidia-frontend
508 nvidia-uvm
509 nvidia-caps

Block devices:
  7 loop
"""


def test_v1_devices_allow_list_names_only_the_assigned_gpus(tmp_path: Path) -> None:
    bases = {c: tmp_path / c for c in ("memory", "cpu", "pids", "devices")}
    for path in bases.values():
        path.mkdir()
    cgroups = Cgroups(1, bases, devices=True, proc_devices=PROC_DEVICES)
    # GPU 1 of the node is device node /dev/nvidia3: its minor, not its index, is allowed.
    limits = _limits_of(
        {"gpus": [1], "resources": {"cpu_milli": 500, "memory_mib": 32}}, 64, {0: 2, 1: 3}
    )
    assert limits == Limits(500, 32, 64, (3,))
    cg = cgroups.create("7.1.0", limits)
    allowed = (bases["devices"] / "7.1.0" / "devices.allow").read_text()
    assert (bases["devices"] / "7.1.0" / "devices.deny").read_text() == "a"
    assert "c 195:3 rwm" in allowed and "c 195:2 rwm" not in allowed
    for rule in ("c 1:3 rwm", "c 136:* rwm", "c 195:255 rwm", "c 508:* rwm", "c 509:* rwm"):
        assert rule in allowed
    assert (bases["memory"] / "7.1.0" / "memory.limit_in_bytes").read_text() == str(32 << 20)
    assert (bases["cpu"] / "7.1.0" / "cpu.cfs_quota_us").read_text() == "50000"
    assert (bases["pids"] / "7.1.0" / "pids.max").read_text() == "64"
    assert cg.paths == [b / "7.1.0" for b in bases.values()]
    # Without GPUs no NVIDIA device at all.
    assert not any("195:" in r or "508:" in r for r in device_rules([], PROC_DEVICES))
    # As an H200 node's /proc/devices spells the drivers.
    h200 = "Character devices:\n195 nvidia\n195 nvidiactl\n238 nvidia-uvm\n241 nvidia-caps\n"
    for rule in ("c 195:0 rwm", "c 195:255 rwm", "c 238:* rwm", "c 241:* rwm"):
        assert rule in device_rules([0], h200)
    # The minor stands in for its index where NVML cannot say.
    assert _limits_of({"gpus": [0, 5]}, 64, {0: 2}).gpu_minors == (2, 5)


def test_v2_limits_on_a_fake_tree(tmp_path: Path) -> None:
    agent = tmp_path / "agent"
    (agent / "7.1.0").mkdir(parents=True)
    # A cgroup of that name in use (another agent of the same name): this task gets its own.
    (agent / "7.1.0" / "cgroup.procs").write_text("1\n")
    cg = Cgroups(2, {"unified": agent}, devices=False).create("7.1.0", Limits(250, 16, 10))
    leaf = agent / f"7.1.0~{os.getpid()}"
    assert cg.paths == [leaf]
    assert (leaf / "memory.max").read_text() == str(16 << 20)
    assert (leaf / "cpu.max").read_text() == "25000 100000"
    assert (leaf / "pids.max").read_text() == "10"
    (leaf / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert cg.oom_kills() == 1
    # No request, no limit (only the process count).
    cg = Cgroups(2, {"unified": agent}, devices=False).create("8.1.0", Limits(0, 0, 10))
    assert sorted(p.name for p in (agent / "8.1.0").iterdir()) == ["pids.max"]


def test_v2_setup_reads_the_nvidia_majors(tmp_path: Path) -> None:
    # A v2-only node (as GPU nodes usually are): the task's device rules must name
    # nvidia-uvm and nvidia-caps by their majors from /proc/devices, or CUDA cannot start
    # in a task that was given its GPU (seen on an H200 node: uvm refused, "CUDA unknown error").
    from cplat.runtime.isolation import _setup_v2

    proc, mount = tmp_path / "proc", tmp_path / "cg2"
    (proc / "self").mkdir(parents=True)
    mount.mkdir()
    (proc / "self/mountinfo").write_text(
        f"30 25 0:26 / {mount} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
    )
    (proc / "self/cgroup").write_text("0::/\n")
    (proc / "devices").write_text(
        "Character devices:\n  1 mem\n136 pts\n195 nvidia-frontend\n"
        "238 nvidia-uvm\n241 nvidia-caps\n\nBlock devices:\n  8 sd\n"
    )
    (mount / "cgroup.controllers").write_text("cpu memory pids\n")
    cg = _setup_v2(proc, "node-a")
    rules = device_rules([0], cg.proc_devices)
    assert {"c 195:0 rwm", "c 195:255 rwm", "c 238:* rwm", "c 241:* rwm"} <= set(rules), rules
    assert "c 195:1 rwm" not in rules


def test_settings_and_gpu_minor_numbers(tmp_path: Path) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text(
        '[agent]\ntask_user = "cplat-task"\nuid_range = "70000-70010"\n'
        '[agent.project_users]\nvision = "vision-svc"\n'
    )
    s = load_isolation_settings(
        conf,
        env={"CPLAT_CGROUP": "v1"},
        flags={"user_map": ["ana=ana-unix"], "project_users": ["nlp=nlp-svc"], "pids_max": "9"},
    )
    assert (s.task_user, s.uid_range, s.cgroup) == ("cplat-task", (70000, 70010), "v1")
    assert s.pids_max == 9
    assert s.project_users == {"vision": "vision-svc", "nlp": "nlp-svc"}
    assert s.user_map == {"ana": "ana-unix"}
    bad = [({"cgroup": "v3"}, "cgroup"), ({"user_map": ["ana"]}, "user_map")]
    bad += [({"uid_range": "5-1"}, "uid_range"), ({"pids_max": "x"}, "pids_max")]
    for flags, field in bad:
        with pytest.raises(ValueError, match=field):
            load_isolation_settings(None, env={}, flags=flags)

    class FakeNVMLError(Exception):
        pass

    mon = GpuMonitor()
    mon.nvml = SimpleNamespace(
        NVMLError=FakeNVMLError, nvmlDeviceGetMinorNumber=lambda h: {"a": 5}[h]
    )
    mon.handles = ["a", None]
    assert mon.minor_numbers() == {0: 5, 1: 1}


# --------------------------------------------------------------------------------------------
# Assignments that cannot be launched fail alone
# --------------------------------------------------------------------------------------------


def _assignment(job: int, **extra: Any) -> dict[str, Any]:
    return {
        "job_id": job,
        "attempt": 1,
        "rank": 0,
        "world_size": 1,
        "command": ["/bin/sh", "-c", "echo ok"],
        "env": {},
        "hosts": [],
        "token": "job-token-must-not-be-logged",
        **extra,
    }


BAD = {
    1: {"command": ["/bin/echo", "\ud800"]},
    2: {"env": {"PASSWORD": "x\ud800y"}},
    3: {"env": {"PASSWORD": "a\0b"}},
    4: {"gpus": ["zero"]},
    5: {"resources": {"memory_mib": "lots"}},
    6: {"world_size": None},
    7: {"workdir": 5},
    8: {"env": ["not", "a", "mapping"]},
}
#: What each failure's reason says: the field, never the value.
WHY = {
    1: "command contains a lone surrogate",
    2: "env PASSWORD contains a lone surrogate",
    3: "env PASSWORD contains a NUL",
    4: "gpus must be a list of integers",
    5: "resources.memory_mib must be an integer",
    6: "world_size must be an integer",
    7: "workdir must be a string",
    8: "env must be an object",
}


def test_bad_assignments_fail_alone_without_leaking_values(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        launcher = Launcher(tmp_path / "agent", "http://s", lambda *a: None)
        for job, extra in BAD.items():
            with pytest.raises(LaunchError, match=WHY[job]):
                await launcher.launch(_assignment(job, **extra))
            rec = launcher.records[TaskKey(job, 1, 0)]
            assert rec.state == "exited" and rec.exit_code == 126 and rec.reason
            assert WHY[job] in rec.reason
            json.dumps(rec.report(), ensure_ascii=False).encode()  # reportable as UTF-8
        proc = await launcher.launch(_assignment(9))
        assert await proc.wait() == 0

    asyncio.run(main())
    for value in ("x\ud800y", "x\\ud800y", "a\0b", "job-token-must-not-be-logged"):
        assert value not in caplog.text


def test_agent_goes_on_after_an_assignment_it_cannot_launch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One poll answer with bad assignments first: the good one still runs, each is reported."""
    reports: dict[int, dict[str, Any]] = {}
    handed = False

    async def register(request: web.Request) -> web.Response:
        return web.json_response(await request.json(), status=201)

    async def heartbeat(request: web.Request) -> web.Response:
        return web.json_response({"cancel": []})

    async def assignments(request: web.Request) -> web.Response:
        nonlocal handed
        if handed:
            await asyncio.sleep(0.2)
            return web.json_response({"assignments": [], "cancel": []})
        handed = True
        items: list[Any] = [_assignment(j, **e) for j, e in BAD.items()]
        items += [{"job_id": "x"}, "junk", _assignment(9)]
        return web.json_response({"assignments": items, "cancel": []})

    async def task(request: web.Request) -> web.Response:
        body = await request.json()
        if body["state"] == "exited":
            reports[body["job_id"]] = body
        return web.json_response({})

    async def logs(request: web.Request) -> web.Response:
        return web.json_response({})

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/nodes", register)
        app.router.add_post("/v1/nodes/{n}/heartbeat", heartbeat)
        app.router.add_get("/v1/nodes/{n}/assignments", assignments)
        app.router.add_post("/v1/nodes/{n}/tasks", task)
        app.router.add_post("/v1/jobs/{id}/logs", logs)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        agent = Agent(
            url,
            "agent-admin-token",
            name="n",
            work_dir=tmp_path / "agent",
            heartbeat_interval=0.1,
            poll_wait=0.2,
            task_user="self",
            tether=False,
        )
        run = asyncio.create_task(agent.run())
        try:
            deadline = time.monotonic() + 15
            while len(reports) < len(BAD) + 1:
                assert time.monotonic() < deadline, reports
                await asyncio.sleep(0.05)
        finally:
            await agent.stop()
            await run
            await runner.cleanup()
        assert reports[9]["exit_code"] == 0
        for job in BAD:
            assert reports[job]["exit_code"] == 126, reports[job]
            assert WHY[job] in reports[job]["reason"], reports[job]

    asyncio.run(main())
    assert "job-token-must-not-be-logged" not in caplog.text
    assert "x\ud800y" not in caplog.text and "x\\ud800y" not in caplog.text


@needs_root
def test_explicit_modes_are_checked_at_start(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="does not exist"):
        Isolation(IsolationSettings(task_user="no-such-user-cplat"), tmp_path / "a").start("n")
    with pytest.raises(Exception, match="root"):
        Isolation(IsolationSettings(task_user="root"), tmp_path / "b").start("n")
    # A task root only root can traverse would lock the task users out: refused at start.
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    iso = Isolation(IsolationSettings(cgroup="none", task_root=private / "t"), tmp_path / "c")
    with pytest.raises(Exception, match="not reachable"):
        iso.start("n")
