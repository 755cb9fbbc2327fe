"""Task processes: their environment, their output, their end, and the record that outlives us.

A task runs as a real subprocess in a session (and so a process group) of its own, so that
stopping it reaches everything it started. Output is read in chunks and handed on as whole
lines. The :class:`Launcher` writes every task it starts to a JSON state file in the agent's
work directory; an agent restarted after a crash reads it back, kills the process groups its
previous life left behind (they are not its children, so it can neither wait for nor adopt
them) and reports those tasks exited with :data:`RESTART_EXIT_CODE`. Exit codes follow
Python's convention: a task killed by signal N exits with ``-N``.

Who a task runs as, where its folder is and what bounds it come from
:mod:`cplat.runtime.isolation`: the child joins its cgroup and drops to its user between
fork and exec. Its environment is built from scratch (never the agent's, which holds the
agent's token), and an assignment that cannot be started for any reason (a field of the
wrong type, text no program can receive, a cgroup that cannot be made) ends as a task that
exited with a reason, so the agent goes on with the others.

Two variables belong to preemption with a grace period: ``CPLAT_CHECKPOINT_DIR`` is a folder
of the job's that outlives the task (under the launcher's ``checkpoint_root``), handed to
every attempt of the job on this node and owned by the task's user; a task told to stop
(SIGTERM) may write its state there before the SIGKILL that ends the grace.
``CPLAT_RESUME_FROM`` names the checkpoint a requeued attempt resumes from. Elastic jobs get
torchrun's rendezvous variables (``PET_NNODES=MIN:MAX``, ``PET_RDZV_*``), so ``torchrun``
without arguments joins the job's rendezvous however many tasks it runs with now.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
import os
import re
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

from cplat.ml.tracking.jobs import tracking_env
from cplat.runtime.isolation import (
    AssignmentError,
    Isolation,
    IsolationError,
    IsolationSettings,
    Sandbox,
    TaskIdentity,
    remove_tree,
)

__all__ = [
    "MANAGED_ENV",
    "RESTART_EXIT_CODE",
    "RESTART_REASON",
    "LaunchError",
    "Launcher",
    "OutputCallback",
    "TaskKey",
    "TaskProcess",
    "TaskRecord",
    "kill_leftover",
    "task_argv",
    "task_env",
    "write_hostfile",
]

log = logging.getLogger("cplat.launch")

#: Variables cplat sets for every task. A job's ``env`` cannot override them: one that set
#: CUDA_VISIBLE_DEVICES would escape its GPUs, one that set RANK or MASTER_PORT would break
#: the rendezvous of its other ranks, one that set CPLAT_TOKEN would act as someone else.
MANAGED_ENV = frozenset(
    {
        "CUDA_VISIBLE_DEVICES",
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "OMPI_COMM_WORLD_LOCAL_SIZE",
        "CPLAT_HOSTFILE",
        "CPLAT_JOB_ID",
        "CPLAT_ATTEMPT",
        "CPLAT_SERVER",
        "CPLAT_TOKEN",
        "CPLAT_RESUME_FROM",
        "CPLAT_CHECKPOINT_DIR",
    }
)
#: torchrun's options as environment variables (``PET_<OPTION>``), set for elastic jobs: a
#: job's own values would break the rendezvous of its other tasks.
ELASTIC_ENV = frozenset({"PET_NNODES", "PET_RDZV_BACKEND", "PET_RDZV_ENDPOINT", "PET_RDZV_ID"})
#: Worker-group restarts torchrun allows an elastic job (a task leaving counts as one) unless
#: the job's ``env`` sets ``PET_MAX_RESTARTS``.
ELASTIC_MAX_RESTARTS = 100
#: What a ``CUDA_VISIBLE_DEVICES`` entry may look like: an index or a (MIG) UUID.
_DEVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9/_.-]{0,127}$")
RESTART_EXIT_CODE = -9
RESTART_REASON = "agent restarted"
#: Output is read in pieces this large; a line longer than this is handed on in pieces.
MAX_LINE = 64 * 1024
STATE_FILE = "tasks.json"

#: Reason of a task whose cgroup's OOM killer struck it.
OOM_REASON = "oom_killed"

#: ``on_output(key, stream, text)``: ``text`` is one or more whole lines of ``stream``
#: ("stdout" or "stderr"); only the last piece of a stream may lack its newline.
OutputCallback = Callable[["TaskKey", str, str], None]


class TaskKey(NamedTuple):
    """A task's identity: one rank of one attempt of one job."""

    job_id: int
    attempt: int
    rank: int

    @classmethod
    def of(cls, item: Mapping[str, Any]) -> TaskKey:
        """Read the key of an assignment or a task report (``KeyError``/``ValueError``)."""
        return cls(int(item["job_id"]), int(item["attempt"]), int(item["rank"]))

    def __str__(self) -> str:
        return f"{self.job_id}.{self.attempt}.{self.rank}"


class LaunchError(Exception):
    """A task that could not be started; it counts as exited with ``exit_code``.

    Parameters
    ----------
    message : str
        What went wrong, for the job's log and the exit report.
    exit_code : int
        127 when the program does not exist, 126 when it cannot be run (the shell's codes).
    """

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def task_argv(command: Any) -> list[str]:
    """Return the argv of a job ``command``: a list as is, a string through ``/bin/sh -c``.

    Raises
    ------
    LaunchError
        When the command is empty or neither a string nor a list of strings.
    """
    if isinstance(command, str) and command.strip():
        return ["/bin/sh", "-c", command]
    if (
        isinstance(command, list)
        and command
        and all(isinstance(a, str) for a in command)
        and command[0]
    ):
        return list(command)
    # The command itself stays out of the message: it may hold secrets, and it ends in logs.
    raise LaunchError("bad command: expected a non-empty string or list of strings", 126)


def printable(text: str) -> str:
    """``text`` with anything JSON or a log cannot carry (lone surrogates) escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _check_text(value: str, what: str) -> None:
    """Refuse text no program can receive: a NUL, or a lone surrogate (not encodable)."""
    if "\0" in value:
        raise LaunchError(f"{what} contains a NUL character", 126)
    try:
        os.fsencode(value)
    except UnicodeEncodeError:
        raise LaunchError(f"{what} contains a lone surrogate (not valid text)", 126) from None


def check_launchable(argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> None:
    """Check that argv, environment and working directory can be handed to a program.

    Raises
    ------
    LaunchError
        Naming the field (``command``, ``env NAME`` or ``workdir``), never its value.
    """
    for arg in argv:
        _check_text(arg, "command")
    for name, value in env.items():
        _check_text(name, "env name")
        if "=" in name or not name:
            raise LaunchError(f"env name {printable(name)!r} is not a variable name", 126)
        _check_text(value, f"env {printable(name)}")
    _check_text(str(cwd), "workdir")


def write_hostfile(hosts: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Write an MPI hostfile, one ``host slots=N`` line per host, and return its path.

    A host is named by its ``address`` (what peers connect to), else by its ``node`` name.
    """
    lines = []
    for h in hosts:
        host = h.get("address") or h.get("node")
        if not host:
            raise ValueError(f"host entry without address or node: {dict(h)!r}")
        lines.append(f"{host} slots={int(h.get('slots', 1))}\n")
    path.write_text("".join(lines))
    return path


def _int_field(assignment: Mapping[str, Any], name: str, default: int | None = None) -> int:
    """Return an integer field of an assignment; LaunchError names it when missing or bad."""
    value = assignment.get(name)
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise LaunchError(f"bad assignment: {name} must be an integer", 126)
    return value


def task_env(
    assignment: Mapping[str, Any],
    base_env: Mapping[str, str],
    server: str,
    token: str | None,
    task_dir: Path,
) -> dict[str, str]:
    """Build a task's environment as docs/service.md describes it.

    Layers, later ones winning: ``base_env`` without the names cplat manages and without
    any ``CPLAT_*`` name (the agent's own token must not reach user code); then the job's
    ``env`` without the names in :data:`MANAGED_ENV`, which are silently dropped; then the
    variables cplat manages. So a job can set ``NCCL_*``, ``PATH`` or its own ``CPLAT_X``,
    but never its rank, GPUs, rendezvous or identity.

    Parameters
    ----------
    assignment : Mapping
        One entry of ``assignments`` from ``GET /v1/nodes/{name}/assignments``. Required:
        ``job_id``, ``attempt``, ``rank``, ``world_size``. Defaults: ``local_rank`` 0,
        ``local_world_size`` 1, ``master_addr`` 127.0.0.1, ``master_port`` 29500, ``gpus``,
        ``hosts`` and ``env`` empty, ``resume_from`` none.
    base_env : Mapping
        The environment to start from: the launcher passes the task's minimal one
        (:func:`~cplat.runtime.isolation.minimal_env`), never the agent's own.
    server : str
        The API's base URL, for ``CPLAT_SERVER``.
    token : str or None
        The job's own token for ``CPLAT_TOKEN`` (left unset when None). Never the agent's
        cluster-admin token: user code would hold every right over the cluster.
    task_dir : Path
        The task's private directory; the hostfile is written there.

    Returns
    -------
    dict
        The complete environment.
    """
    rank = _int_field(assignment, "rank")
    world = _int_field(assignment, "world_size")
    local_rank = _int_field(assignment, "local_rank", 0)
    local_world = _int_field(assignment, "local_world_size", 1)
    gpus = assignment.get("gpus") or []
    if not isinstance(gpus, list) or not all(isinstance(g, int) for g in gpus):
        raise LaunchError("bad assignment: gpus must be a list of integers", 126)
    hosts = assignment.get("hosts") or []
    if not isinstance(hosts, list) or not all(isinstance(h, Mapping) for h in hosts):
        raise LaunchError("bad assignment: hosts must be a list of objects", 126)
    try:
        hostfile = write_hostfile(hosts, task_dir / "hostfile")
    except (ValueError, TypeError):
        raise LaunchError("bad assignment: hosts need an address or node and slots", 126) from None
    env = {k: v for k, v in base_env.items() if k not in MANAGED_ENV and not k.startswith("CPLAT_")}
    job_env = assignment.get("env") or {}
    if not isinstance(job_env, Mapping):
        raise LaunchError("bad assignment: env must be an object", 126)
    reserved = MANAGED_ENV | (ELASTIC_ENV if assignment.get("elastic") is not None else frozenset())
    env.update({str(k): str(v) for k, v in job_env.items() if str(k) not in reserved})
    env.update(
        {
            # GPU indices; an agent that maps device slots sets ``visible_devices`` (MIG UUIDs).
            "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus),
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(local_rank),
            "LOCAL_WORLD_SIZE": str(local_world),
            "MASTER_ADDR": str(assignment.get("master_addr") or "127.0.0.1"),
            "MASTER_PORT": str(_int_field(assignment, "master_port", 29500)),
            "OMPI_COMM_WORLD_RANK": str(rank),
            "OMPI_COMM_WORLD_SIZE": str(world),
            "OMPI_COMM_WORLD_LOCAL_RANK": str(local_rank),
            "OMPI_COMM_WORLD_LOCAL_SIZE": str(local_world),
            "CPLAT_HOSTFILE": str(hostfile),
            "CPLAT_JOB_ID": str(_int_field(assignment, "job_id")),
            "CPLAT_ATTEMPT": str(_int_field(assignment, "attempt")),
            "CPLAT_SERVER": server,
        }
    )
    if token:
        env["CPLAT_TOKEN"] = token
    visible = assignment.get("visible_devices")
    if visible is not None:
        if not isinstance(visible, list) or not all(
            isinstance(d, str) and _DEVICE.match(d) for d in visible
        ):
            raise LaunchError("bad assignment: visible_devices must be device names", 126)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(visible)
    if assignment.get("resume_from"):
        env["CPLAT_RESUME_FROM"] = str(assignment["resume_from"])
    try:
        # A job with a tracking run logs to it: MLFLOW_TRACKING_URI, _RUN_ID, _EXPERIMENT_ID
        # and _TRACKING_TOKEN (its own token, scoped to the run) win over the job's env.
        env.update(tracking_env(assignment.get("tracking"), server, token))
    except ValueError as exc:
        raise LaunchError(str(exc), 126) from None
    elastic = assignment.get("elastic")
    if elastic is not None:
        env.update(elastic_env(assignment, elastic, job_env))
    return env


def elastic_env(
    assignment: Mapping[str, Any], elastic: Any, job_env: Mapping[str, Any]
) -> dict[str, str]:
    """Return torchrun's rendezvous variables for a task of an elastic job.

    ``PET_NNODES=MIN:MAX`` (each task is one torchrun node), the c10d rendezvous at the
    job's master address and port, and the job's id as the rendezvous id; the job's ``env``
    cannot override these, but may set ``PET_MAX_RESTARTS`` (default
    :data:`ELASTIC_MAX_RESTARTS`).

    Raises
    ------
    LaunchError
        When ``elastic`` is not ``{"min_tasks": int, "max_tasks": int}`` with
        ``1 <= min_tasks <= max_tasks``.
    """
    if not isinstance(elastic, Mapping):
        raise LaunchError("bad assignment: elastic must be an object", 126)
    low, high = elastic.get("min_tasks"), elastic.get("max_tasks")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)) or not (
        1 <= low <= high  # type: ignore[operator]
    ):
        raise LaunchError("bad assignment: elastic needs 1 <= min_tasks <= max_tasks", 126)
    addr = str(assignment.get("master_addr") or "127.0.0.1")
    port = _int_field(assignment, "master_port", 29500)
    out = {
        "PET_NNODES": f"{low}:{high}",
        "PET_RDZV_BACKEND": "c10d",
        # An IPv6 address needs brackets before the port.
        "PET_RDZV_ENDPOINT": f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}",
        "PET_RDZV_ID": f"cplat-job-{_int_field(assignment, 'job_id')}",
    }
    if "PET_MAX_RESTARTS" not in job_env:
        out["PET_MAX_RESTARTS"] = str(ELASTIC_MAX_RESTARTS)
    return out


#: Entries of a checkpoint folder looked at to tell whether a task wrote to it.
MAX_CHECKPOINT_ENTRIES = 100_000


def checkpoint_signature(path: Path) -> tuple[tuple[str, int, int], ...]:
    """Return name, size and modification time of everything under ``path`` (no links followed).

    Empty for a missing or empty folder; at most :data:`MAX_CHECKPOINT_ENTRIES` entries.
    """
    out: list[tuple[str, int, int]] = []
    try:
        for base, dirs, files in os.walk(path, followlinks=False):
            for name in dirs + files:
                full = os.path.join(base, name)
                with contextlib.suppress(OSError):
                    st = os.lstat(full)
                    out.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
                if len(out) >= MAX_CHECKPOINT_ENTRIES:
                    return tuple(sorted(out))
    except OSError:
        pass
    return tuple(sorted(out))


def _signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        log.warning("not allowed to signal process group %d", pgid)
        return False
    return True


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (``[0]`` is the state)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself hold spaces and parentheses.
    return text[text.rfind(")") + 2 :].split()


def _start_time(pid: int) -> int | None:
    stat = _proc_stat(pid)
    return int(stat[19]) if stat is not None and len(stat) > 19 else None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _group_alive(pgid: int) -> bool:
    """Whether a process group still has a member that is not a zombie."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    # killpg(0) also succeeds for zombies, which nobody may ever reap in a container
    # without an init; only a running member keeps the group alive.
    for entry in proc.iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None and len(stat) > 2 and int(stat[2]) == pgid and stat[0] != "Z":
                return True
    return False


class TaskProcess:
    """One running task: a subprocess leading its own process group, its output pumped.

    Use :meth:`spawn` to create one. :meth:`wait` returns once the task has ended *and* its
    output is drained, so the last lines are handed on before the exit is known.

    Parameters
    ----------
    key : TaskKey
        Which task this is.
    proc : asyncio.subprocess.Process
        The started process (a session leader, so its pid is its process group id).
    on_output : OutputCallback
        Receives the output.
    straggler_grace : float
        Seconds processes left in the group after the leader exits get between SIGTERM and
        SIGKILL.
    """

    def __init__(
        self,
        key: TaskKey,
        proc: asyncio.subprocess.Process,
        on_output: OutputCallback,
        *,
        straggler_grace: float = 2.0,
        sandbox: Sandbox | None = None,
    ) -> None:
        self.key = key
        self.pid = proc.pid
        self.pgid = proc.pid
        self.stop_requested = False
        self.sandbox = sandbox
        #: Whether the OOM killer struck the task's cgroup (known once it has ended).
        self.oom_killed = False
        self._proc = proc
        self._on_output = on_output
        self._straggler_grace = straggler_grace
        self._readers = [
            asyncio.ensure_future(self._pump(stream, name))
            for stream, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr"))
            if stream is not None
        ]
        self._done: asyncio.Future[int] = asyncio.ensure_future(self._supervise())

    @classmethod
    async def spawn(
        cls,
        key: TaskKey,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: Path,
        on_output: OutputCallback,
        *,
        straggler_grace: float = 2.0,
        sandbox: Sandbox | None = None,
    ) -> TaskProcess:
        """Start ``argv`` in a new session with ``env`` in ``cwd``.

        With a ``sandbox`` the child joins its cgroup, becomes its user and takes its
        rlimits before it executes ``argv``.

        Raises
        ------
        LaunchError
            When the working directory is missing or the program cannot be started.
        """
        check_launchable(argv, env, cwd)
        if not cwd.is_dir():
            raise LaunchError(f"working directory {printable(str(cwd))} does not exist", 126)
        extra: dict[str, Any] = {"cwd": str(cwd)}
        if sandbox is not None:
            # The sandbox enters cwd after dropping to the task's user (see preexec_fn).
            extra = {"preexec_fn": sandbox.preexec_fn(str(cwd)), "umask": sandbox.umask}
        name = printable(argv[0])
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=dict(env),
                start_new_session=True,
                **extra,
            )
        except FileNotFoundError as err:
            raise LaunchError(f"cannot start {name!r}: {err.strerror}", 127) from err
        except OSError as err:
            raise LaunchError(f"cannot start {name!r}: {err.strerror or err}", 126) from err
        except subprocess.SubprocessError as err:
            # preexec_fn failed: the cgroup, the user switch or the working directory (entered
            # as the task's user) was refused.
            raise LaunchError(
                f"cannot enter the task's sandbox (cgroup, user, or working directory "
                f"{printable(str(cwd))} as the task's user): {err}",
                126,
            ) from err
        finally:
            if sandbox is not None:
                sandbox.spawned()
        return cls(key, proc, on_output, straggler_grace=straggler_grace, sandbox=sandbox)

    @property
    def returncode(self) -> int | None:
        """The exit code once :meth:`wait` would return without waiting, else None."""
        return self._done.result() if self._done.done() else None

    async def _pump(self, stream: asyncio.StreamReader, name: str) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = b""
        while True:
            data = await stream.read(MAX_LINE)
            if not data:
                break
            pending += data
            cut = pending.rfind(b"\n") + 1
            if cut == 0 and len(pending) >= MAX_LINE:
                cut = len(pending)
            if cut:
                self._emit(name, decoder.decode(pending[:cut]))
                pending = pending[cut:]
        tail = decoder.decode(pending, final=True)
        if tail:
            self._emit(name, tail)

    def _emit(self, name: str, text: str) -> None:
        if not text:
            return
        try:
            self._on_output(self.key, name, text)
        except Exception:
            # A failing consumer must not stop the pump: the task would block on a full pipe.
            log.exception("output callback failed for task %s", self.key)

    async def _supervise(self) -> int:
        # Before Python 3.12 Process.wait() returns only once the pipes close too, which a
        # straggler holding stdout delays forever; returncode is set at the exit itself.
        waiter = asyncio.ensure_future(self._proc.wait())
        while self._proc.returncode is None:
            await asyncio.wait({waiter}, timeout=0.1)
        code = self._proc.returncode
        # The task is over once its leader exits; anything left in its group would keep its
        # GPUs busy and its pipes open, so it gets the same SIGTERM-then-SIGKILL as a stop.
        if _group_alive(self.pgid):
            _signal_group(self.pgid, signal.SIGTERM)
            deadline = time.monotonic() + self._straggler_grace
            while _group_alive(self.pgid) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if _group_alive(self.pgid):
                _signal_group(self.pgid, signal.SIGKILL)
        if self.sandbox is not None:
            # A daemon that left the process group is still in the cgroup (or the uid).
            try:
                self.oom_killed = await asyncio.to_thread(self.sandbox.finish)
            except Exception:
                log.exception("cleaning up after task %s failed", self.key)
        # Something outside the group (a daemon that called setsid) may still hold the
        # pipes; its output is not the task's, so stop reading after a moment.
        _, pending = await asyncio.wait([*self._readers, waiter], timeout=1.0)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        return code

    async def wait(self) -> int:
        """Wait for the task to end and its output to drain; return its exit code."""
        return await asyncio.shield(self._done)

    async def stop(self, grace: float) -> int:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds; return the exit code.

        Parameters
        ----------
        grace : float
            Seconds the task has to exit after SIGTERM.
        """
        self.stop_requested = True
        if not self._done.done():
            _signal_group(self.pgid, signal.SIGTERM)
            try:
                return await asyncio.wait_for(asyncio.shield(self._done), grace)
            except asyncio.TimeoutError:
                _signal_group(self.pgid, signal.SIGKILL)
        return await self.wait()

    def kill(self) -> None:
        """SIGKILL the process group now (an impatient stop)."""
        self.stop_requested = True
        if not self._done.done():
            _signal_group(self.pgid, signal.SIGKILL)


@dataclass
class TaskRecord:
    """What the state file keeps of a task, and what the agent reports of it."""

    job_id: int
    attempt: int
    rank: int
    state: str = "running"
    exit_code: int | None = None
    reason: str | None = None
    pid: int | None = None
    pgid: int | None = None
    #: The leader's start time (clock ticks after boot) and the boot it ran in: together
    #: they tell our process group from one that reused its id.
    start_time: int | None = None
    boot_id: str | None = None
    #: Who it ran as, its folder and its cgroup directories: what a restarted agent cleans.
    uid: int | None = None
    task_dir: str | None = None
    cgroups: list[str] | None = None

    @property
    def key(self) -> TaskKey:
        """The task's key."""
        return TaskKey(self.job_id, self.attempt, self.rank)

    def report(self) -> dict[str, Any]:
        """Return the task as ``POST /v1/nodes/{name}/tasks`` and heartbeats carry it."""
        out: dict[str, Any] = {
            "job_id": self.job_id,
            "attempt": self.attempt,
            "rank": self.rank,
            "state": self.state,
            "exit_code": self.exit_code,
            "pid": self.pid,
        }
        if self.state == "exited" and self.reason:
            out["reason"] = self.reason
        return out


def kill_leftover(record: TaskRecord) -> bool:
    """SIGKILL the process group of a task a previous agent started, if it is still ours.

    The group is left alone when the machine rebooted since (the boot id changed) or when a
    process with the group's id runs but started at another time (the id was reused). A
    group whose leader is gone can still have members: while they live the kernel does not
    hand out its id again, so they are ours.

    Returns
    -------
    bool
        Whether a signal was sent.
    """
    if record.pgid is None:
        return False
    boot = _boot_id()
    if record.boot_id is not None and boot is not None and record.boot_id != boot:
        return False
    started = _start_time(record.pgid)
    if started is not None and record.start_time is not None and started != record.start_time:
        log.info("task %s: process group %d was reused; not killing", record.key, record.pgid)
        return False
    return _signal_group(record.pgid, signal.SIGKILL)


class Launcher:
    """Starts tasks and keeps the state file of every task not yet acknowledged.

    Parameters
    ----------
    work_dir : Path
        The agent's work directory (mode 0700): ``tasks.json`` lives there.
    server : str
        The API's base URL, for ``CPLAT_SERVER``.
    on_output : OutputCallback
        Receives every task's output.
    base_env : Mapping, optional
        Variables every task starts from, over :func:`~cplat.runtime.isolation.minimal_env`
        (default: none; the agent's own environment never reaches a task).
    straggler_grace : float
        See :class:`TaskProcess`.
    isolation : Isolation, optional
        Users, folders and limits of the tasks (default: the agent's own user, tasks in
        ``<work_dir>/tasks/<job>.<attempt>.<rank>/``, rlimits only).
    checkpoint_root : Path, optional
        Where each job's ``CPLAT_CHECKPOINT_DIR`` lives (``<root>/<job id>``); default next
        to the task root (``<task_root>.checkpoints``). A shared filesystem here lets a
        requeued job resume on another node.
    """

    def __init__(
        self,
        work_dir: Path,
        server: str,
        on_output: OutputCallback,
        *,
        base_env: Mapping[str, str] | None = None,
        straggler_grace: float = 2.0,
        isolation: Isolation | None = None,
        checkpoint_root: Path | None = None,
    ) -> None:
        self.work_dir = work_dir
        self.server = server
        self.state_path = work_dir / STATE_FILE
        self.records: dict[TaskKey, TaskRecord] = {}
        self.processes: dict[TaskKey, TaskProcess] = {}
        #: GPU index -> minor number of its /dev/nvidia node (the index when unknown).
        self.gpu_minors: dict[int, int] = {}
        self._on_output = on_output
        self._base_env = base_env
        self._straggler_grace = straggler_grace
        self._sandboxes: dict[TaskKey, Sandbox] = {}
        if isolation is None:
            isolation = Isolation(IsolationSettings(task_user="self", cgroup="none"), work_dir)
            isolation.start("launcher")
        self.isolation = isolation
        root = isolation.task_root
        self.checkpoint_root = checkpoint_root or root.with_name(root.name + ".checkpoints")
        #: What each running task's checkpoint folder held when it started.
        self._checkpoint_marks: dict[TaskKey, tuple[tuple[str, int, int], ...]] = {}

    def checkpoint_dir(self, job_id: int) -> Path:
        """Return the folder of a job's checkpoints on this node (``CPLAT_CHECKPOINT_DIR``)."""
        return self.checkpoint_root / str(int(job_id))

    def _prepare_checkpoint_dir(self, job_id: int, identity: TaskIdentity) -> Path:
        """Create the job's checkpoint folder and give it, contents included, to the task."""
        root = self.checkpoint_root
        root.mkdir(parents=True, exist_ok=True)
        st = os.lstat(root)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise LaunchError(f"checkpoint root {root} is not a directory of the agent's", 126)
        # Task users must reach their own folder, and list no one else's.
        os.chmod(root, 0o711 if identity.switch else 0o700)
        path = self.checkpoint_dir(job_id)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise LaunchError("the job's checkpoint folder is not a directory", 126)
        if identity.switch:
            # An earlier attempt ran as another uid: what it wrote becomes this task's. Links
            # are changed themselves, never followed (a task controls this tree).
            os.chown(path, identity.uid, identity.gid, follow_symlinks=False)
            for base, dirs, files in os.walk(path, followlinks=False):
                for name in dirs + files:
                    os.chown(os.path.join(base, name), identity.uid, identity.gid,
                             follow_symlinks=False)  # fmt: skip
        return path

    def checkpoint_written(self, key: TaskKey) -> Path | None:
        """Return the job's checkpoint folder if task ``key`` changed it (and left it non-empty)."""
        mark = self._checkpoint_marks.pop(key, None)
        if mark is None:
            return None
        path = self.checkpoint_dir(key.job_id)
        now = checkpoint_signature(path)
        return path if now and now != mark else None

    def task_dir(self, key: TaskKey) -> Path:
        """Return the private directory of task ``key``."""
        sandbox = self._sandboxes.get(key)
        return sandbox.task_dir if sandbox is not None else self.isolation.task_root / str(key)

    def recover(self) -> list[TaskRecord]:
        """Load the state file a previous agent left; kill and close out its running tasks.

        Running tasks become exited with :data:`RESTART_EXIT_CODE` and
        :data:`RESTART_REASON`; exited ones keep their codes (their reports were never
        acknowledged). All of them are kept until :meth:`forget`; their folders and
        cgroups are removed at once.

        Returns
        -------
        list of TaskRecord
            Every task of the previous life, all exited.
        """
        try:
            raw = json.loads(self.state_path.read_text())
            records = [TaskRecord(**r) for r in raw["tasks"]]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, TypeError, KeyError) as err:
            aside = self.state_path.with_name(STATE_FILE + ".corrupt")
            log.error("unreadable state file %s (%s); moved to %s", self.state_path, err, aside)
            with contextlib.suppress(OSError):
                os.replace(self.state_path, aside)
            return []
        for rec in records:
            if rec.state == "running":
                killed = kill_leftover(rec)
                log.warning(
                    "task %s (pgid %s) was left by a previous agent; %s",
                    rec.key,
                    rec.pgid,
                    "killed it" if killed else "it is gone or not ours",
                )
                rec.state, rec.exit_code, rec.reason = "exited", RESTART_EXIT_CODE, RESTART_REASON
            try:
                self.isolation.cleanup(rec.task_dir, rec.cgroups or [])
            except OSError as err:
                log.warning("cannot clean up after task %s: %s", rec.key, err)
            self.records[rec.key] = rec
        self._save()
        return records

    async def launch(self, assignment: Mapping[str, Any]) -> TaskProcess:
        """Start an assignment's task and record it.

        The job's token is the assignment's ``token`` field (see :func:`task_env`). The
        working directory is the assignment's ``workdir``, else the task's own directory.

        Raises
        ------
        LaunchError
            When the task cannot start, whatever the cause; it is then recorded as exited
            with the error's code and reason.
        ValueError, KeyError, TypeError
            When the assignment lacks its key fields (nothing is recorded).
        """
        key = TaskKey.of(assignment)
        sandbox: Sandbox | None = None
        try:
            try:
                argv = task_argv(assignment.get("command"))
                try:
                    sandbox = self.isolation.prepare(str(key), assignment, self.gpu_minors)
                except AssignmentError as err:
                    raise LaunchError(str(err), 126) from err
                except (IsolationError, OSError) as err:
                    raise LaunchError(f"cannot isolate the task: {err}", 126) from err
                tdir = sandbox.task_dir
                base = sandbox.base_env()
                if self._base_env is not None:
                    base.update(self._base_env)
                env = task_env(assignment, base, self.server, assignment.get("token"), tdir)
                sandbox.own(Path(env["CPLAT_HOSTFILE"]))
                try:
                    ckdir = self._prepare_checkpoint_dir(key.job_id, sandbox.identity)
                except OSError as err:
                    raise LaunchError(f"cannot prepare the checkpoint folder: {err}", 126) from err
                env["CPLAT_CHECKPOINT_DIR"] = str(ckdir)
                self._checkpoint_marks[key] = checkpoint_signature(ckdir)
                workdir = assignment.get("workdir")
                if workdir is not None and not isinstance(workdir, str):
                    raise LaunchError("bad assignment: workdir must be a string", 126)
                cwd = Path(workdir) if workdir else tdir
                proc = await TaskProcess.spawn(
                    key,
                    argv,
                    env,
                    cwd,
                    self._on_output,
                    straggler_grace=self._straggler_grace,
                    sandbox=sandbox,
                )
            except LaunchError:
                raise
            except (KeyError, ValueError, TypeError, AttributeError, OverflowError) as err:
                # The message names the problem but no value: env values are secrets.
                what = err.args[0] if isinstance(err, KeyError) and err.args else None
                detail = f"missing field {what!r}" if what else type(err).__name__
                raise LaunchError(f"bad assignment: {printable(str(detail))}", 126) from err
            except Exception as err:
                log.exception("task %s could not start", key)
                raise LaunchError(f"cannot start the task: {type(err).__name__}", 126) from err
        except LaunchError as err:
            if sandbox is not None:
                try:
                    sandbox.finish()
                finally:
                    sandbox.release()
            err.args = (printable(str(err)),)
            self.records[key] = TaskRecord(
                *key, state="exited", exit_code=err.exit_code, reason=str(err)
            )
            self._save()
            raise
        self.processes[key] = proc
        self._sandboxes[key] = sandbox
        self.records[key] = TaskRecord(
            *key,
            pid=proc.pid,
            pgid=proc.pgid,
            start_time=_start_time(proc.pid),
            boot_id=_boot_id(),
            uid=sandbox.identity.uid,
            task_dir=str(sandbox.task_dir),
            cgroups=[str(p) for p in sandbox.cgroup.paths] if sandbox.cgroup else None,
        )
        self._save()
        return proc

    def set_exited(self, key: TaskKey, exit_code: int, reason: str | None) -> TaskRecord:
        """Record that task ``key`` ended (also one that never started); return its record."""
        self.processes.pop(key, None)
        rec = self.records.setdefault(key, TaskRecord(*key))
        rec.state, rec.exit_code, rec.reason = "exited", exit_code, reason
        # Its cgroup is gone by now (see TaskProcess.wait).
        rec.cgroups = None
        self._save()
        return rec

    def forget(self, keys: Iterable[TaskKey]) -> None:
        """Drop acknowledged exited tasks from the state file; remove their folders."""
        changed = False
        for key in keys:
            rec = self.records.get(key)
            if rec is not None and rec.state == "exited":
                del self.records[key]
                self._release(key, rec)
                changed = True
                if not any(k.job_id == key.job_id for k in self.records):
                    # An empty folder holds nothing to resume from; a written one stays for
                    # the job's next attempt, which may land on this node again.
                    with contextlib.suppress(OSError):
                        self.checkpoint_dir(key.job_id).rmdir()
        if changed:
            self._save()

    def _release(self, key: TaskKey, rec: TaskRecord) -> None:
        sandbox = self._sandboxes.pop(key, None)
        try:
            if sandbox is not None:
                sandbox.release()
            elif rec.task_dir:
                remove_tree(Path(rec.task_dir))
        except OSError as err:
            log.warning("cannot remove the folder of task %s: %s", key, err)

    def close(self) -> None:
        """Give back what ended tasks still hold (folders, uids); the agent is leaving."""
        for key in [k for k in self._sandboxes if k not in self.processes]:
            rec = self.records.get(key)
            if rec is not None:
                self._release(key, rec)
        self.isolation.close()

    def _save(self) -> None:
        # Write-then-rename so a crash leaves the old file or the new one, never half of one.
        self.work_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(STATE_FILE + ".tmp")
        body = {"version": 1, "tasks": [asdict(r) for r in self.records.values()]}
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with open(fd, "w") as f:
            json.dump(body, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_path)
        with contextlib.suppress(OSError):
            fd = os.open(self.work_dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
