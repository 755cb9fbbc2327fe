"""Task isolation: the Unix user a task runs as, its private folder, and the cgroup bounding it.

A task must reach neither the platform (the agent's token, the server's data dir and store)
nor other tasks, nor more CPU, memory or processes than it asked for. The agent, running as
root, gives every task:

* **A user of its own.** ``task_user = "dynamic"`` (the default under root) hands each task a
  transient uid/gid from a range (61184-65519 by default, as systemd's ``DynamicUser``)
  that no account in ``/etc/passwd`` or ``/etc/group`` uses. One shared service account
  would not do: every task of that account could read every other task's
  ``/proc/<pid>/environ`` (the passwords of another project) and folders, since the kernel
  checks those against the uid. A uid is held by an exclusive ``flock`` on a per-uid lock
  file in a root-only directory (``/run/cplat/uids``) for as long as its task (and the
  task's folder) exists, so several agents on one host never share one. A fixed account
  (``task_user = "cplat-task"``) runs all tasks as that existing user instead: simpler to
  audit, but its tasks share a uid and so can read each other. Per-project accounts
  (``project_users``) and cplat-user-to-Unix-user mappings (``user_map``) pick an existing
  account per assignment, the user mapping winning. The agent never runs a task as uid 0
  or as its own uid, except in ``"self"`` mode, which is all a non-root agent can do (it
  says so loudly at start: its tasks can read its token and work dir).
* **A private folder**, ``<task root>/<job>.<attempt>.<rank>`` (mode 0700, owned by the
  task's uid) under a task root of mode 0711 owned by root, outside the agent's work dir
  (which stays 0700) and outside any server data dir. It is removed when the task's record
  is dropped.
* **A cgroup**, ``cplat/<agent>/<job>.<attempt>.<rank>``, as Slurm's task/cgroup plugin
  makes one: on cgroup v2 (a unified hierarchy whose cpu, memory and pids controllers can
  be enabled) ``memory.max``, ``memory.swap.max = 0``, ``cpu.max`` and ``pids.max``; on
  cgroup v1 ``memory.limit_in_bytes`` (and ``memory.memsw.limit_in_bytes``),
  ``cpu.cfs_quota_us``, ``pids.max`` and a devices allow-list: the usual character devices
  plus only the assigned GPUs (``/dev/nvidia<minor>``) and the NVIDIA control devices. The
  task's first process joins its cgroups, then drops to its user, before it executes
  anything; when it ends, whatever is left in the cgroup is killed and the cgroup removed,
  and an OOM kill is read from the cgroup so the task ends with reason ``oom_killed``.
* **Devices** (``devices`` setting): v2 has no devices controller, so there the same
  allow-list becomes an eBPF device program (:mod:`cplat.runtime.devices_bpf`) attached to
  the task's cgroup before anything joins it. At start the agent attaches an allow-all
  program to a throwaway cgroup to learn whether the kernel lets it (root or ``CAP_BPF``,
  ``CONFIG_CGROUP_BPF``); when not, it says why once and the node reports
  ``devices_restricted: false``. On v1 the devices controller is used where it is
  mounted, else the program on the node's v2 hierarchy (a hybrid node's
  ``/sys/fs/cgroup/unified``, which needs no controller for it), where the task then
  also gets a directory. ``devices = "bpf"`` insists on the program (on v1 too, instead of
  the devices controller; start fails when it cannot be had), ``"none"`` restricts
  nothing.
* **Rlimits where no cgroup is usable** (not root, no writable hierarchy, or
  ``cgroup = "none"``): ``RLIMIT_AS`` of twice the memory request plus 256 MiB (address
  space runs well above resident memory: thread stacks, allocator arenas, mapped
  libraries), none for tasks with GPUs (CUDA reserves address space far beyond any
  memory), and ``RLIMIT_NPROC`` of ``pids_max`` where the uid is the task's own. CPU is
  then not limited. The agent says so at start and the node view shows the mode.

A request of 0 CPU or 0 memory sets no limit on that resource (the scheduler reserves
nothing for it either).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import logging
import os
import pwd
import random
import re
import resource
import shutil
import signal
import stat
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cplat.errors import InputError
from cplat.runtime import devices_bpf
from cplat.settings import read_toml

__all__ = [
    "DEFAULT_UID_RANGE",
    "AssignmentError",
    "Isolation",
    "IsolationError",
    "IsolationSettings",
    "Sandbox",
    "TaskIdentity",
    "device_rules",
    "load_isolation_settings",
    "minimal_env",
]

log = logging.getLogger("cplat.isolation")

MIB = 1 << 20
DEFAULT_UID_RANGE = (61184, 65519)
DEFAULT_PIDS_MAX = 4096
#: Where tasks live by default when they run as users other than the agent's.
DEFAULT_TASK_ROOT = Path("/var/lib/cplat/tasks")
#: Lock files of the dynamic uids in use; /run is a root-only tmpfs cleared at boot.
LOCK_DIRS = (Path("/run/cplat/uids"), Path("/tmp/cplat-uids-root"))
CPU_PERIOD_US = 100_000
#: The environment every task starts from: nothing of the agent's own.
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Character devices every task may use (major, minor; None is any minor): null, zero,
#: full, random, urandom, tty, ptmx, and the pseudo-terminal slaves.
BASE_DEVICES: tuple[tuple[int, int | None], ...] = (
    (1, 3),
    (1, 5),
    (1, 7),
    (1, 8),
    (1, 9),
    (5, 0),
    (5, 2),
    (136, None),
)
#: The NVIDIA character devices' major when /proc/devices does not list it.
NVIDIA_MAJOR = 195
NVIDIACTL_MINOR = 255
NVIDIA_MODESET_MINOR = 254
CGROUP_MODES = ("auto", "v2", "v1", "none")
DEVICE_MODES = ("auto", "bpf", "none")
V1_REQUIRED = ("memory", "cpu", "pids")
V1_OPTIONAL = ("devices", "cpuacct")
V2_CONTROLLERS = ("cpu", "memory", "pids")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


class IsolationError(Exception):
    """Isolation cannot be set up as configured (a missing account, a bad task root...)."""


class AssignmentError(IsolationError):
    """An assignment's field the isolation needs is malformed (the message names it)."""


# -- settings ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IsolationSettings:
    """How an agent isolates its tasks (see the module docstring).

    Parameters
    ----------
    task_user : str, optional
        ``"dynamic"``, ``"self"`` or the name of an existing account; None: dynamic when
        the agent runs as root, else self.
    uid_range : tuple of int
        First and last uid (inclusive) of dynamic users.
    project_users : Mapping
        cplat project -> Unix account its tasks run as.
    user_map : Mapping
        cplat user -> Unix account their tasks run as (wins over ``project_users``).
    task_root : Path, optional
        Parent of the task folders; default ``/var/lib/cplat/tasks/<agent name>``, or
        ``<work dir>/tasks`` in self mode.
    cgroup : str
        ``"auto"`` (v2 if usable, else v1, else rlimits), ``"v2"``, ``"v1"`` or ``"none"``
        (rlimits only).
    pids_max : int
        Most processes and threads a task may have.
    proc_root : Path
        Where procfs is mounted (tests point it elsewhere).
    lock_dir : Path, optional
        Directory of the uid lock files (default ``/run/cplat/uids``).
    devices : str
        ``"auto"`` (the v1 devices controller where the limits use v1 and it is mounted,
        else an eBPF device program where the kernel allows one, else no restriction),
        ``"bpf"`` (the program, or start fails) or ``"none"``.
    """

    task_user: str | None = None
    uid_range: tuple[int, int] = DEFAULT_UID_RANGE
    project_users: Mapping[str, str] = field(default_factory=dict)
    user_map: Mapping[str, str] = field(default_factory=dict)
    task_root: Path | None = None
    cgroup: str = "auto"
    pids_max: int = DEFAULT_PIDS_MAX
    proc_root: Path = Path("/proc")
    lock_dir: Path | None = None
    devices: str = "auto"

    def __post_init__(self) -> None:
        lo, hi = self.uid_range
        if not 1000 <= lo <= hi < 2**31 - 1:
            raise InputError(f"bad uid range {lo}-{hi}: 1000 <= first <= last", field="uid_range")
        if self.cgroup not in CGROUP_MODES:
            raise InputError(f"must be one of {', '.join(CGROUP_MODES)}", field="cgroup")
        if self.devices not in DEVICE_MODES:
            raise InputError(f"must be one of {', '.join(DEVICE_MODES)}", field="devices")
        if self.pids_max < 1:
            raise InputError("must be at least 1", field="pids_max")
        if self.task_user is not None and not self.task_user:
            raise InputError("must not be empty", field="task_user")


def _mapping(value: Any, name: str, source: str) -> dict[str, str]:
    if isinstance(value, Mapping):
        items = list(value.items())
    else:
        items = []
        for entry in value or []:
            key, sep, account = str(entry).partition("=")
            if not sep:
                raise InputError(f"expected NAME=ACCOUNT, got {entry!r}", source=source, field=name)
            items.append((key, account))
    out = {}
    for key, account in items:
        if not str(key) or not str(account):
            raise InputError("names and accounts must not be empty", source=source, field=name)
        out[str(key)] = str(account)
    return out


def _uid_range(value: Any, source: str) -> tuple[int, int]:
    try:
        if isinstance(value, str):
            lo, _, hi = value.partition("-")
            return int(lo), int(hi)
        lo, hi = value
        return int(lo), int(hi)
    except (TypeError, ValueError):
        raise InputError(
            f"expected FIRST-LAST (e.g. 61184-65519), got {value!r}",
            source=source,
            field="uid_range",
        ) from None


_KEYS = (
    "task_user",
    "uid_range",
    "project_users",
    "user_map",
    "task_root",
    "cgroup",
    "pids_max",
    "devices",
)


def load_isolation_settings(
    file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> IsolationSettings:
    """Merge the agent's isolation settings: TOML ``[agent]`` < ``CPLAT_*`` environment < flags.

    Parameters
    ----------
    file : path, optional
        A TOML file with an ``[agent]`` table holding any of ``task_user``, ``uid_range``
        (``"61184-65519"`` or ``[61184, 65519]``), ``project_users`` and ``user_map``
        (tables of name = account), ``task_root``, ``cgroup``, ``pids_max``, ``devices``.
    env : Mapping, optional
        Environment (default ``os.environ``); ``CPLAT_TASK_USER``, ``CPLAT_TASK_ROOT``,
        ``CPLAT_UID_RANGE``, ``CPLAT_CGROUP``, ``CPLAT_PIDS_MAX`` and ``CPLAT_DEVICES`` are
        read.
    flags : Mapping, optional
        Command-line values by key (None: not given); ``project_users`` and ``user_map``
        are lists of ``NAME=ACCOUNT`` and add to the file's.

    Raises
    ------
    InputError
        For an unreadable file, an unknown key or a bad value, naming it.
    """
    values: dict[str, Any] = {}
    if file:
        source = str(file)
        data = read_toml(file)
        table = data.get("agent", {})
        if not isinstance(table, dict):
            raise InputError("[agent] must be a table", source=source, field="agent")
        for key, value in table.items():
            if key not in _KEYS:
                raise InputError(
                    f"unknown key (valid: {', '.join(_KEYS)})", source=source, field=key
                )
            values[key] = value
    environ = os.environ if env is None else env
    for key in ("task_user", "task_root", "uid_range", "cgroup", "pids_max", "devices"):
        var = f"CPLAT_{key.upper()}"
        if environ.get(var):
            values[key] = environ[var]
    for key, value in (flags or {}).items():
        if value is None:
            continue
        if key in ("project_users", "user_map"):
            values[key] = {
                **_mapping(values.get(key), key, "config"),
                **_mapping(value, key, "flags"),
            }
        else:
            values[key] = value
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in ("project_users", "user_map"):
            out[key] = _mapping(value, key, "settings")
        elif key == "uid_range":
            out[key] = _uid_range(value, "settings")
        elif key == "task_root":
            out[key] = Path(str(value))
        elif key == "pids_max":
            try:
                out[key] = int(value)
            except (TypeError, ValueError):
                raise InputError(f"expected an integer, got {value!r}", field=key) from None
        else:
            out[key] = str(value)
    return replace(IsolationSettings(), **out)


# -- identities -------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskIdentity:
    """Who a task runs as.

    Parameters
    ----------
    uid, gid : int
        Its user and primary group.
    groups : tuple of int
        Supplementary groups.
    name : str
        Account name (``cplat-<uid>`` for a dynamic user).
    home : str, optional
        The account's home; None for a dynamic user (its task folder is HOME).
    private : bool
        Whether no other task has this uid (a dynamic user): then killing every process of
        the uid at the end, and ``RLIMIT_NPROC``, concern this task alone.
    switch : bool
        False in self mode: the task keeps the agent's user.
    """

    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str
    home: str | None
    private: bool
    switch: bool = True


def _account(name: str) -> TaskIdentity:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise IsolationError(f"task user {name!r} does not exist on this node") from None
    if pw.pw_uid == 0:
        raise IsolationError(f"task user {name!r} is root; tasks never run as root")
    if pw.pw_uid == os.geteuid():
        raise IsolationError(f"task user {name!r} is the agent's own user")
    groups = tuple(g for g in os.getgrouplist(name, pw.pw_gid) if g != 0)
    home = pw.pw_dir if pw.pw_dir and os.path.isdir(pw.pw_dir) else None
    return TaskIdentity(pw.pw_uid, pw.pw_gid, groups, name, home, private=False)


def _self_identity() -> TaskIdentity:
    uid = os.geteuid()
    try:
        pw = pwd.getpwuid(uid)
        name, home = pw.pw_name, pw.pw_dir
    except KeyError:
        name, home = str(uid), None
    return TaskIdentity(uid, os.getegid(), (), name, home, private=False, switch=False)


def _file_ids(path: Path, column: int) -> set[int]:
    ids: set[int] = set()
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ids
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) > column and parts[column].isdigit():
            ids.add(int(parts[column]))
    return ids


def _uid_taken(uid: int) -> bool:
    """Whether an account or group (through NSS too) has this number."""
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        pass
    try:
        grp.getgrgid(uid)
        return True
    except KeyError:
        return False


def _process_uids(proc: Path) -> set[int]:
    """Uids of running processes (a task left by a crashed agent still holds its uid)."""
    uids: set[int] = set()
    try:
        entries = list(proc.iterdir())
    except OSError:
        return uids
    for entry in entries:
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                uids.add(entry.stat().st_uid)
    return uids


def _private_dir(path: Path, mode: int) -> Path:
    """Create (or check) a root-owned directory of ``mode`` that nobody else may write."""
    path.mkdir(parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise IsolationError(f"{path} is not a directory owned by the agent's user")
    os.chmod(path, mode)
    return path


class UidPool:
    """Dynamic uids, each held by an exclusive flock on ``<lock dir>/<uid>``.

    Parameters
    ----------
    first, last : int
        The range (inclusive).
    lock_dir : Path, optional
        Where the lock files are (default: ``/run/cplat/uids``, else a root-owned
        ``/tmp/cplat-uids-root``).
    proc : Path
        procfs, to skip uids that running processes hold.
    """

    def __init__(
        self, first: int, last: int, lock_dir: Path | None = None, proc: Path = Path("/proc")
    ) -> None:
        self.first, self.last = first, last
        self._proc = proc
        if lock_dir is None:
            lock_dir = LOCK_DIRS[0] if LOCK_DIRS[0].parent.parent.is_dir() else LOCK_DIRS[1]
        self.lock_dir = lock_dir

    def open(self) -> None:
        """Create the lock directory (root only, 0700)."""
        _private_dir(self.lock_dir, 0o700)

    def acquire(self) -> tuple[int, int]:
        """Take a free uid; return ``(uid, lock fd)``. Close the fd to give it back.

        Raises
        ------
        IsolationError
            When every uid of the range is taken.
        """
        busy = _process_uids(self._proc)
        taken = _file_ids(Path("/etc/passwd"), 2) | _file_ids(Path("/etc/group"), 2)
        span = self.last - self.first + 1
        # A random start keeps agents that start together from contending for one uid.
        start = random.randrange(span)
        for i in range(span):
            uid = self.first + (start + i) % span
            if uid in busy or uid in taken:
                continue
            fd = os.open(self.lock_dir / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            if _uid_taken(uid):
                os.close(fd)
                continue
            return uid, fd
        raise IsolationError(f"no free task uid in {self.first}-{self.last}")


# -- cgroups ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What one task may use.

    Parameters
    ----------
    cpu_milli : int
        CPU in thousandths of a core (0: no limit).
    memory_mib : int
        Memory in MiB (0: no limit).
    pids : int
        Most processes and threads.
    gpu_minors : tuple of int
        Minor numbers of the assigned GPUs' ``/dev/nvidia*`` nodes.
    """

    cpu_milli: int = 0
    memory_mib: int = 0
    pids: int = DEFAULT_PIDS_MAX
    gpu_minors: tuple[int, ...] = ()

    @property
    def memory_bytes(self) -> int:
        """The memory limit in bytes."""
        return self.memory_mib * MIB

    @property
    def cpu_quota_us(self) -> int:
        """CPU time per :data:`CPU_PERIOD_US`; the kernel refuses less than 1 ms."""
        return max(1000, self.cpu_milli * CPU_PERIOD_US // 1000)


def _proc_devices(text: str) -> dict[str, int]:
    """Character device majors by driver name, from the text of /proc/devices."""
    out: dict[str, int] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if line.endswith(":"):
            section = line
            continue
        parts = line.split(None, 1)
        if section.startswith("Character") and len(parts) == 2 and parts[0].isdigit():
            out.setdefault(parts[1], int(parts[0]))
    return out


def device_rules(gpu_minors: Sequence[int], proc_devices: str) -> list[str]:
    """Return the v1 ``devices.allow`` rules of a task: the basic devices and its GPUs only.

    Parameters
    ----------
    gpu_minors : sequence of int
        Minor numbers of the assigned GPUs (``/dev/nvidia<minor>``).
    proc_devices : str
        The text of ``/proc/devices``, for the NVIDIA drivers' majors.

    Returns
    -------
    list of str
        Rules such as ``c 1:3 rwm``, one per write to ``devices.allow``.
    """
    majors = _proc_devices(proc_devices)
    rules = [f"c {major}:{'*' if minor is None else minor} rwm" for major, minor in BASE_DEVICES]
    pts = majors.get("pts")
    if pts is not None and pts != 136:
        rules.append(f"c {pts}:* rwm")
    if gpu_minors:
        nvidia = majors.get("nvidia-frontend", majors.get("nvidia", NVIDIA_MAJOR))
        rules += [f"c {nvidia}:{m} rwm" for m in sorted(set(gpu_minors))]
        rules += [f"c {nvidia}:{NVIDIACTL_MINOR} rwm", f"c {nvidia}:{NVIDIA_MODESET_MINOR} rwm"]
        # nvidia-uvm (minor 0) and nvidia-uvm-tools (1); nvidia-caps gates MIG instances.
        for name in ("nvidia-uvm", "nvidia-caps"):
            if name in majors:
                rules.append(f"c {majors[name]}:* rwm")
    return rules


def _write(path: Path, *values: str) -> None:
    """Write each value with its own write() call, as cgroup files want one item at a time."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        for value in values:
            os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _keyed(text: str | None, key: str) -> int | None:
    """Return ``key``'s value in a ``key value`` per line file (memory.events, cpu.stat)."""
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            with contextlib.suppress(ValueError):
                return int(parts[1])
    return None


class TaskCgroup:
    """The cgroup directories of one task (one per v1 hierarchy, or one v2 directory).

    Parameters
    ----------
    version : int
        1 or 2.
    dirs : Mapping
        Controller (or ``"unified"``) -> directory; co-mounted v1 controllers share one.
    """

    def __init__(self, version: int, dirs: Mapping[str, Path]) -> None:
        self.version = version
        self.dirs = dict(dirs)

    @property
    def paths(self) -> list[Path]:
        """The distinct directories."""
        return list(dict.fromkeys(self.dirs.values()))

    def open_procs(self) -> list[int]:
        """Open every ``cgroup.procs`` for writing: the child writes into them before exec."""
        fds: list[int] = []
        try:
            for path in self.paths:
                fds.append(os.open(path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC))
        except OSError:
            for fd in fds:
                os.close(fd)
            raise
        return fds

    def oom_kills(self) -> int:
        """How many processes the OOM killer took from this cgroup."""
        if self.version == 2:
            return _keyed(_read(self.dirs["unified"] / "memory.events"), "oom_kill") or 0
        mem = self.dirs.get("memory")
        if mem is None:
            return 0
        kills = _keyed(_read(mem / "memory.oom_control"), "oom_kill")
        if kills is not None:
            return kills
        # Kernels before 4.13 do not count kills; a hit limit is the next best sign.
        return 1 if (_read(mem / "memory.failcnt") or "0").strip() not in ("", "0") else 0

    def pids(self) -> list[int]:
        """Return the processes in the cgroup."""
        out: set[int] = set()
        for path in self.paths:
            for word in (_read(path / "cgroup.procs") or "").split():
                if word.isdigit():
                    out.add(int(word))
        return sorted(out)

    def kill(self, timeout: float = 3.0) -> None:
        """SIGKILL everything in the cgroup (daemons the task left) and wait until empty."""
        if self.version == 2 and (self.dirs["unified"] / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                _write(self.dirs["unified"] / "cgroup.kill", "1")
        deadline = time.monotonic() + timeout
        while True:
            pids = self.pids()
            if not pids or time.monotonic() > deadline:
                return
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)

    def remove(self, timeout: float = 2.0) -> bool:
        """Remove the directories (the cgroup must be empty); False when some remain."""
        deadline = time.monotonic() + timeout
        left = self.paths
        while left:
            rest = []
            for path in left:
                try:
                    path.rmdir()
                except FileNotFoundError:
                    pass
                except OSError:
                    rest.append(path)
            left = rest
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if left:
            log.warning("cgroups %s could not be removed", ", ".join(map(str, left)))
        return not left


class Cgroups:
    """The agent's cgroup subtree, ``cplat/<agent>``, in each hierarchy it uses.

    Parameters
    ----------
    version : int
        1 or 2.
    bases : Mapping
        Controller (or ``"unified"``) -> the agent's directory. With v1 limits and ``bpf``,
        ``"unified"`` is the agent's directory on the node's v2 hierarchy.
    devices : bool
        Whether task devices are restricted.
    proc_devices : str
        The text of /proc/devices.
    bpf : bool
        Whether the restriction is an eBPF device program on the ``"unified"`` directory
        (else the v1 devices controller's allow-list).
    """

    def __init__(
        self,
        version: int,
        bases: Mapping[str, Path],
        devices: bool,
        proc_devices: str = "",
        bpf: bool = False,
    ) -> None:
        self.version = version
        self.bases = dict(bases)
        self.devices = devices
        self.proc_devices = proc_devices
        self.bpf = bpf
        #: Why devices are not restricted ("" when they are).
        self.devices_why = "" if devices else "not set up"

    @property
    def devices_how(self) -> str:
        """How task devices are restricted, in words for the start-up message."""
        if not self.devices:
            return f"not restricted: {self.devices_why}"
        if self.bpf:
            return f"restricted by an eBPF device program under {self.bases['unified']}"
        return "restricted by the v1 devices controller"

    def create(self, name: str, limits: Limits) -> TaskCgroup:
        """Create the task's cgroup ``name`` with its limits; nothing has joined it yet.

        A directory of that name left by an earlier life is removed first when empty (its
        counters would be taken for this task's); one still in use (another agent of the
        same name) makes this task's name unique instead.
        """
        dirs = self._fresh(name)
        cg = TaskCgroup(self.version, dirs)
        try:
            if self.version == 2:
                self._limit_v2(dirs["unified"], limits)
            else:
                self._limit_v1(dirs, limits)
            if self.devices and self.bpf:
                # Before any process joins: a device opened before the program is attached
                # would stay open. A failure fails the task rather than running it with
                # every device of the node, which the node reports it does not allow.
                devices_bpf.attach(
                    dirs["unified"], device_rules(limits.gpu_minors, self.proc_devices)
                )
        except OSError:
            cg.remove(timeout=0.2)
            raise
        return cg

    def _fresh(self, name: str) -> dict[str, Path]:
        for suffix in ("", f"~{os.getpid()}", f"~{os.getpid()}-{random.randrange(10**9)}"):
            dirs = {c: base / (name + suffix) for c, base in self.bases.items()}
            stale = TaskCgroup(self.version, dirs)
            if any(p.exists() for p in stale.paths):
                if stale.pids() or not stale.remove(timeout=0.2):
                    continue
            made: list[Path] = []
            try:
                for path in stale.paths:
                    path.mkdir()
                    made.append(path)
            except FileExistsError:
                TaskCgroup(self.version, {str(i): p for i, p in enumerate(made)}).remove(0.2)
                continue
            return dirs
        raise OSError(errno.EEXIST, f"cgroup {name} is in use")

    def _limit_v2(self, path: Path, limits: Limits) -> None:
        if limits.memory_mib:
            _write(path / "memory.max", str(limits.memory_bytes))
            if (path / "memory.swap.max").exists():
                _write(path / "memory.swap.max", "0")
        if limits.cpu_milli:
            _write(path / "cpu.max", f"{limits.cpu_quota_us} {CPU_PERIOD_US}")
        _write(path / "pids.max", str(limits.pids))

    def _limit_v1(self, dirs: Mapping[str, Path], limits: Limits) -> None:
        mem = dirs["memory"]
        if limits.memory_mib:
            _write(mem / "memory.limit_in_bytes", str(limits.memory_bytes))
            # memsw (memory + swap) must not be below the memory limit, so it comes second.
            if (mem / "memory.memsw.limit_in_bytes").exists():
                _write(mem / "memory.memsw.limit_in_bytes", str(limits.memory_bytes))
        if limits.cpu_milli:
            _write(dirs["cpu"] / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(dirs["cpu"] / "cpu.cfs_quota_us", str(limits.cpu_quota_us))
        _write(dirs["pids"] / "pids.max", str(limits.pids))
        if self.devices and not self.bpf and "devices" in dirs:
            _write(dirs["devices"] / "devices.deny", "a")
            _write(
                dirs["devices"] / "devices.allow",
                *device_rules(limits.gpu_minors, self.proc_devices),
            )

    def close(self) -> None:
        """Remove the agent's own directories when no task cgroup is left in them."""
        for base in dict.fromkeys(self.bases.values()):
            with contextlib.suppress(OSError):
                base.rmdir()


def _unescape(text: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def _cgroup_mounts(proc: Path) -> tuple[dict[str, tuple[Path, str]], tuple[Path, str] | None]:
    """v1 controller -> (mount point, root in hierarchy), and the v2 mount, from mountinfo."""
    v1: dict[str, tuple[Path, str]] = {}
    v2: tuple[Path, str] | None = None
    for line in (_read(proc / "self/mountinfo") or "").splitlines():
        left, sep, right = line.partition(" - ")
        fields_, rest = left.split(), right.split()
        if not sep or len(fields_) < 5 or not rest:
            continue
        mount = (Path(_unescape(fields_[4])), _unescape(fields_[3]))
        if rest[0] == "cgroup2" and v2 is None:
            v2 = mount
        elif rest[0] == "cgroup" and len(rest) > 2:
            for opt in rest[2].split(","):
                if opt in V1_REQUIRED + V1_OPTIONAL:
                    v1.setdefault(opt, mount)
    return v1, v2


def _own_cgroups(proc: Path) -> tuple[dict[str, str], str | None]:
    """Return the agent's cgroup path per v1 controller, and its v2 path."""
    v1: dict[str, str] = {}
    v2 = None
    for line in (_read(proc / "self/cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2 = parts[2]
        for ctrl in parts[1].split(","):
            if ctrl:
                v1[ctrl] = parts[2]
    return v1, v2


def _under(mount: tuple[Path, str], own: str | None) -> Path:
    """Return cgroup ``own``'s directory under a mount (the mount when not visible)."""
    point, root = mount
    rel = own or "/"
    if root != "/" and rel.startswith(root):
        rel = rel[len(root) :]
    path = point / rel.lstrip("/")
    return path if path.is_dir() else point


def _setup_v1(proc: Path, agent: str) -> Cgroups:
    mounts, _ = _cgroup_mounts(proc)
    own, _ = _own_cgroups(proc)
    missing = [c for c in V1_REQUIRED if c not in mounts]
    if missing:
        raise IsolationError(f"cgroup v1 controllers {', '.join(missing)} are not mounted")
    bases: dict[str, Path] = {}
    for ctrl in V1_REQUIRED + V1_OPTIONAL:
        if ctrl not in mounts:
            continue
        # Under the agent's own cgroup, so limits an operator set on the agent still apply.
        base = _under(mounts[ctrl], own.get(ctrl)) / "cplat" / agent
        try:
            base.mkdir(parents=True, exist_ok=True)
            if not os.access(base, os.W_OK):
                raise PermissionError(errno.EACCES, "not writable", str(base))
        except OSError as err:
            if ctrl in V1_REQUIRED:
                raise IsolationError(f"cannot create cgroup {base}: {err.strerror}") from err
            continue
        bases[ctrl] = base
    devices = "devices" in bases
    return Cgroups(1, bases, devices, _read(proc / "devices") or "")


def _setup_v2(proc: Path, agent: str) -> Cgroups:
    _, mount = _cgroup_mounts(proc)
    if mount is None:
        raise IsolationError("no cgroup v2 hierarchy is mounted")
    point = mount[0]
    available = set((_read(point / "cgroup.controllers") or "").split())
    missing = [c for c in V2_CONTROLLERS if c not in available]
    if missing:
        raise IsolationError(
            f"cgroup v2 at {point} lacks the {', '.join(missing)} controller(s) "
            "(they are in use by a v1 hierarchy or not delegated)"
        )
    enable = " ".join(f"+{c}" for c in V2_CONTROLLERS)
    # Tasks live in leaves under <mount>/cplat/<agent>: no process sits in an inner node,
    # which v2 requires of a cgroup that hands controllers down.
    path = point
    for part in ("cplat", agent):
        try:
            on = set((_read(path / "cgroup.subtree_control") or "").split())
            if not set(V2_CONTROLLERS) <= on:
                _write(path / "cgroup.subtree_control", enable)
            path = path / part
            path.mkdir(exist_ok=True)
        except OSError as err:
            raise IsolationError(
                f"cannot enable {enable} under {path}: {err.strerror or err}"
            ) from err
    try:
        _write(path / "cgroup.subtree_control", enable)
    except OSError as err:
        raise IsolationError(f"cannot enable {enable} under {path}: {err.strerror}") from err
    return Cgroups(2, {"unified": path}, devices=False, proc_devices=_read(proc / "devices") or "")


def _v2_device_base(proc: Path, agent: str) -> Path:
    """Create the agent's directory on the v2 hierarchy for device programs alone (v1 limits).

    Under the agent's own v2 cgroup, as the v1 directories are under its v1 ones, so that
    device programs an operator attached there still apply to its tasks.
    """
    _, mount = _cgroup_mounts(proc)
    if mount is None:
        raise IsolationError("no cgroup v2 hierarchy is mounted to attach device programs to")
    _, own = _own_cgroups(proc)
    base = _under(mount, own) / "cplat" / agent
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise IsolationError(f"cannot create cgroup {base}: {err.strerror or err}") from err
    return base


def _setup_devices(cg: Cgroups, proc: Path, agent: str, mode: str) -> None:
    """Decide how the tasks of ``cg`` get their devices restricted (see the module docstring).

    Raises
    ------
    IsolationError
        When ``mode`` is ``"bpf"`` and no device program can be attached here.
    """
    cg.devices, cg.bpf = False, False
    if mode == "none":
        cg.devices_why = "turned off (devices = 'none')"
        return
    if mode == "auto" and cg.version == 1 and "devices" in cg.bases:
        cg.devices, cg.devices_why = True, ""
        return
    made = None
    try:
        if cg.version == 2:
            base = cg.bases["unified"]
        else:
            base = made = _v2_device_base(proc, agent)
        why = devices_bpf.probe(base)
    except IsolationError as err:
        why = str(err)
    if why is not None:
        if made is not None:
            with contextlib.suppress(OSError):
                made.rmdir()
        if mode == "bpf":
            raise IsolationError(f"devices = 'bpf' cannot be had: {why}")
        cg.devices_why = why
        return
    cg.bases["unified"] = base
    cg.devices, cg.bpf, cg.devices_why = True, True, ""


# -- sandboxes --------------------------------------------------------------------------


def minimal_env(identity: TaskIdentity, task_dir: Path) -> dict[str, str]:
    """Return the environment a task starts from: PATH, LANG, who it is; nothing else.

    Parameters
    ----------
    identity : TaskIdentity
        The task's user.
    task_dir : Path
        Its folder: its TMPDIR, and its HOME unless its account has one.
    """
    return {
        "PATH": BASE_PATH,
        "LANG": "C.UTF-8",
        "HOME": identity.home or str(task_dir),
        "USER": identity.name,
        "LOGNAME": identity.name,
        "TMPDIR": str(task_dir),
    }


def _kill_uid(uid: int, proc: Path, timeout: float = 3.0) -> None:
    """SIGKILL every process of ``uid`` (only ever a task's private uid) until none is left."""
    deadline = time.monotonic() + timeout
    while True:
        pids = []
        with contextlib.suppress(OSError):
            for entry in proc.iterdir():
                if entry.name.isdigit():
                    with contextlib.suppress(OSError):
                        if entry.stat().st_uid == uid:
                            pids.append(int(entry.name))
        live = [
            p for p in pids if (_read(proc / str(p) / "stat") or "").rpartition(")")[2][1:2] != "Z"
        ]
        if not live or time.monotonic() > deadline:
            return
        for pid in live:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def _sweep_uid_files(uid: int) -> None:
    """Remove what a private uid left in the shared temporary directories."""
    for tmp in (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm")):
        with contextlib.suppress(OSError):
            for entry in tmp.iterdir():
                with contextlib.suppress(OSError):
                    st = entry.lstat()
                    if st.st_uid != uid:
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink()


def remove_tree(path: Path) -> None:
    """Remove a task folder; symlinks inside are removed, never followed."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_symlink() or not path.is_dir():
            path.unlink()
            return
    shutil.rmtree(path, ignore_errors=True)


class Sandbox:
    """One task's user, folder, cgroup and rlimits, from :meth:`Isolation.prepare`.

    Call :meth:`preexec` in the child (it is ``preexec_fn``), :meth:`finish` when the
    task's leader has exited, and :meth:`release` when its record is dropped.
    """

    def __init__(
        self,
        identity: TaskIdentity,
        task_dir: Path,
        cgroup: TaskCgroup | None,
        rlimits: list[tuple[int, int]],
        lock_fd: int | None,
        proc: Path,
        umask: int,
    ) -> None:
        self.identity = identity
        self.task_dir = task_dir
        self.cgroup = cgroup
        self.rlimits = rlimits
        self.umask = umask
        self._lock_fd = lock_fd
        self._proc = proc
        self._procs_fds: list[int] = []
        self._released = False

    def base_env(self) -> dict[str, str]:
        """See :func:`minimal_env`."""
        return minimal_env(self.identity, self.task_dir)

    def own(self, path: Path) -> None:
        """Give a file the agent wrote for the task (its hostfile) to the task's user."""
        if self.identity.switch:
            os.chown(path, self.identity.uid, self.identity.gid)

    def preexec_fn(self, cwd: str | None = None) -> Callable[[], None]:
        """Return the function the child runs between fork and exec (as root).

        It joins the task's cgroups, drops to the task's user, enters ``cwd`` and sets the
        rlimits: in that order, since a process that is no longer root cannot move itself
        into a cgroup, and a working directory entered as root would let the task start
        inside a folder its own user may not traverse.
        Only system calls on values prepared here: it runs in a forked copy of a
        multi-threaded process, where taking a lock another thread held can hang forever.
        """
        if self.cgroup is not None and not self._procs_fds:
            self._procs_fds = self.cgroup.open_procs()
        fds = tuple(self._procs_fds)
        ident = self.identity
        groups = list(ident.groups)
        limits = []
        for res, value in self.rlimits:
            # Never above the agent's own hard limit: the task could not raise it, and the
            # failed call would stop the launch.
            hard = resource.getrlimit(res)[1]
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            limits.append((res, (value, value)))
        write, setrlimit = os.write, resource.setrlimit

        def preexec() -> None:
            for fd in fds:
                write(fd, b"0")  # "0" is the writing process itself
            if ident.switch:
                os.setgroups(groups)
                os.setresgid(ident.gid, ident.gid, ident.gid)
                os.setresuid(ident.uid, ident.uid, ident.uid)
            if cwd is not None:
                os.chdir(cwd)
            for res, value in limits:
                setrlimit(res, value)

        return preexec

    def spawned(self) -> None:
        """Close the parent's copies of the cgroup files once the child has started."""
        for fd in self._procs_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._procs_fds = []

    def finish(self) -> bool:
        """Kill what the task left, remove its cgroup; return whether the OOM killer struck."""
        self.spawned()
        oom = False
        if self.cgroup is not None:
            oom = self.cgroup.oom_kills() > 0
            self.cgroup.kill()
            self.cgroup.remove()
        elif self.identity.private:
            # Without a cgroup, a daemon that left the process group is still the uid's.
            _kill_uid(self.identity.uid, self._proc)
        return oom

    def release(self) -> None:
        """Remove the task's folder and give its uid back (idempotent)."""
        if self._released:
            return
        self._released = True
        self.spawned()
        remove_tree(self.task_dir)
        if self._lock_fd is not None:
            if self.identity.private:
                _kill_uid(self.identity.uid, self._proc, timeout=1.0)
                _sweep_uid_files(self.identity.uid)
            os.close(self._lock_fd)
            self._lock_fd = None


def _limits_of(assignment: Mapping[str, Any], pids: int, minors: Mapping[int, int]) -> Limits:
    """Return an assignment's limits; AssignmentError names a bad field (never its value)."""
    res = assignment.get("resources") or {}
    if not isinstance(res, Mapping):
        raise AssignmentError("bad assignment: resources must be an object")
    amounts = {}
    for name in ("cpu_milli", "memory_mib"):
        value = res.get(name) or 0
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise AssignmentError(f"bad assignment: resources.{name} must be an integer >= 0")
        amounts[name] = value
    gpus = assignment.get("gpus") or []
    if not isinstance(gpus, list) or not all(
        isinstance(g, int) and not isinstance(g, bool) for g in gpus
    ):
        raise AssignmentError("bad assignment: gpus must be a list of integers")
    return Limits(
        cpu_milli=amounts["cpu_milli"],
        memory_mib=amounts["memory_mib"],
        pids=pids,
        gpu_minors=tuple(minors.get(g, g) for g in gpus),
    )


class Isolation:
    """Decides how this agent's tasks are isolated and prepares each task's :class:`Sandbox`.

    Parameters
    ----------
    settings : IsolationSettings
        What the operator asked for.
    work_dir : Path
        The agent's work dir (its state; 0700).
    """

    def __init__(self, settings: IsolationSettings, work_dir: Path) -> None:
        self.settings = settings
        self.work_dir = Path(work_dir)
        self.mode = "self"
        self.cgroups: Cgroups | None = None
        #: Why no cgroup is used ("" when one is).
        self.cgroup_why = "not started"
        self.task_root = self.work_dir / "tasks"
        self._fixed: TaskIdentity | None = None
        self._pool: UidPool | None = None
        self._started = False

    @property
    def root(self) -> bool:
        """Whether the agent can switch users and create cgroups."""
        return os.geteuid() == 0

    def start(self, agent: str) -> None:
        """Check the settings against the machine, create the directories, say what holds.

        Parameters
        ----------
        agent : str
            The node name (names the agent's cgroups and default task root).

        Raises
        ------
        IsolationError
            When an explicitly asked mode cannot be had (a missing account, users other
            than the agent's own without root, a cgroup version that is not usable).
        """
        s = self.settings
        name = _SAFE_NAME.sub("_", agent) or "agent"
        wanted = s.task_user or ("dynamic" if self.root else "self")
        if wanted != "self" and not self.root:
            raise IsolationError(
                f"task_user {wanted!r} needs the agent to run as root (it is uid "
                f"{os.geteuid()}); use task_user = 'self' to run tasks as the agent's user"
            )
        self.mode = wanted
        _private_dir(self.work_dir, 0o700)
        if wanted == "dynamic":
            self._pool = UidPool(*s.uid_range, lock_dir=s.lock_dir, proc=s.proc_root)
            self._pool.open()
        elif wanted != "self":
            self._fixed = _account(wanted)
        if self.root and wanted != "self":
            for account in {*s.project_users.values(), *s.user_map.values()}:
                try:
                    _account(account)
                except IsolationError as err:
                    log.warning("%s: tasks mapped to it will fail", err)
        elif s.project_users or s.user_map:
            log.warning("project_users and user_map are ignored: tasks run as the agent's user")
        if wanted == "self":
            self.task_root = s.task_root or self.work_dir / "tasks"
            _private_dir(self.task_root, 0o700)
            log.warning(
                "TASKS RUN AS THE AGENT'S OWN USER (uid %d): they can read its token, its work "
                "dir %s and each other's environment. Run the agent as root (task_user "
                "'dynamic') to give every task a user of its own.",
                os.geteuid(),
                self.work_dir,
            )
        else:
            self.task_root = s.task_root or DEFAULT_TASK_ROOT / name
            self._make_task_root()
        self.cgroups, self.cgroup_why = self._setup_cgroups(name)
        if self.cgroups is None and s.devices == "bpf":
            raise IsolationError(
                f"devices = 'bpf' needs a cgroup to attach the program to ({self.cgroup_why})"
            )
        if self.cgroups is None:
            log.warning(
                "no usable cgroup (%s): task limits fall back to rlimits (memory as address "
                "space, processes per private uid); CPU is not limited",
                self.cgroup_why,
            )
        else:
            log.info(
                "task isolation: task_user %s, cgroup v%d under %s (devices %s)",
                wanted,
                self.cgroups.version,
                ", ".join(map(str, dict.fromkeys(self.cgroups.bases.values()))),
                self.cgroups.devices_how,
            )
            if not self.cgroups.devices and s.devices != "none":
                log.warning(
                    "task devices are not restricted (%s): a task can open every device "
                    "node its user may, the GPUs of other tasks included",
                    self.cgroups.devices_why,
                )
        self._started = True

    def _make_task_root(self) -> None:
        root = self.task_root
        for parent in reversed(root.parents):
            if parent.exists():
                st = os.stat(parent)
                if not st.st_mode & stat.S_IXOTH:
                    raise IsolationError(
                        f"task root {root} is not reachable by task users: {parent} has mode "
                        f"{stat.S_IMODE(st.st_mode):o}; choose another task_root"
                    )
            else:
                _private_dir(parent, 0o711)
        _private_dir(root, 0o711)

    def _setup_cgroups(self, name: str) -> tuple[Cgroups | None, str]:
        s = self.settings
        if s.cgroup == "none":
            return None, "cgroups are turned off (cgroup = 'none')"
        if not self.root:
            return None, f"the agent is not root (uid {os.geteuid()})"
        order = {"auto": ("v2", "v1"), "v2": ("v2",), "v1": ("v1",)}[s.cgroup]
        reasons = []
        for version in order:
            try:
                setup = _setup_v2 if version == "v2" else _setup_v1
                cgroups = setup(s.proc_root, name)
            except IsolationError as err:
                reasons.append(f"{version}: {err}")
                continue
            try:
                _setup_devices(cgroups, s.proc_root, name, s.devices)
            except IsolationError:
                cgroups.close()
                raise
            return cgroups, ""
        if s.cgroup != "auto":
            raise IsolationError(f"cgroup {s.cgroup} is not usable ({'; '.join(reasons)})")
        return None, "; ".join(reasons)

    def describe(self) -> dict[str, Any]:
        """Return the isolation in effect, as the node registration reports it."""
        cg = self.cgroups
        return {
            "task_user": self.mode,
            "user_mapping": bool(
                self.mode != "self" and (self.settings.project_users or self.settings.user_map)
            ),
            "cgroup": f"v{cg.version}" if cg is not None else "rlimits",
            "devices_restricted": bool(cg is not None and cg.devices),
        }

    def identity(self, assignment: Mapping[str, Any]) -> tuple[TaskIdentity, int | None]:
        """Who the assignment's task runs as; the lock fd of a dynamic uid."""
        if self.mode == "self":
            return _self_identity(), None
        s = self.settings
        user, project = assignment.get("user"), assignment.get("project")
        account = s.user_map.get(str(user)) if user is not None else None
        if account is None and project is not None:
            account = s.project_users.get(str(project))
        if account is not None:
            return _account(account), None
        if self._fixed is not None:
            return self._fixed, None
        assert self._pool is not None
        uid, fd = self._pool.acquire()
        return TaskIdentity(uid, uid, (), f"cplat-{uid}", None, private=True), fd

    def prepare(
        self, key: str, assignment: Mapping[str, Any], gpu_minors: Mapping[int, int]
    ) -> Sandbox:
        """Make a task's user, folder and cgroup.

        Parameters
        ----------
        key : str
            ``<job>.<attempt>.<rank>``: names the folder and the cgroup.
        assignment : Mapping
            The assignment (``user``, ``project``, ``resources``, ``gpus`` are read).
        gpu_minors : Mapping
            GPU index -> minor number of its device node.

        Raises
        ------
        IsolationError, OSError, ValueError
            When any part cannot be made; nothing is left behind.
        """
        if not self._started:
            raise IsolationError("Isolation.start() was not called")
        limits = _limits_of(assignment, self.settings.pids_max, gpu_minors)
        ident, fd = self.identity(assignment)
        task_dir = self.task_root / key
        cgroup = None
        try:
            remove_tree(task_dir)
            task_dir.mkdir(mode=0o700)
            os.chmod(task_dir, 0o700)
            if ident.switch:
                os.chown(task_dir, ident.uid, ident.gid)
            if self.cgroups is not None:
                cgroup = self.cgroups.create(key, limits)
            rlimits = [] if cgroup is not None else self._rlimits(ident, limits)
            # Files a dynamic user creates are its own alone, even in /tmp.
            umask = 0o077 if ident.private else 0o022
            return Sandbox(ident, task_dir, cgroup, rlimits, fd, self.settings.proc_root, umask)
        except BaseException:
            if cgroup is not None:
                cgroup.remove(timeout=0.2)
            remove_tree(task_dir)
            if fd is not None:
                os.close(fd)
            raise

    def _rlimits(self, ident: TaskIdentity, limits: Limits) -> list[tuple[int, int]]:
        out = []
        if limits.memory_mib and not limits.gpu_minors:
            out.append((resource.RLIMIT_AS, 2 * limits.memory_bytes + 256 * MIB))
        if ident.private:
            out.append((resource.RLIMIT_NPROC, limits.pids))
        return out

    def cleanup(self, task_dir: str | None, cgroups: Iterable[str]) -> None:
        """Remove what a task of an earlier life of the agent left (its state file names it)."""
        paths = [Path(p) for p in cgroups]
        if paths:
            left = TaskCgroup(1, {str(i): p for i, p in enumerate(paths)})
            left.kill()
            left.remove(timeout=0.5)
        if task_dir:
            remove_tree(Path(task_dir))

    def close(self) -> None:
        """Remove the agent's cgroup directories and default task root (when empty)."""
        if self.cgroups is not None:
            self.cgroups.close()
        if self.mode != "self" and self.settings.task_root is None:
            with contextlib.suppress(OSError):
                self.task_root.rmdir()
