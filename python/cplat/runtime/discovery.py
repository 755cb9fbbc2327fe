"""What this machine offers: CPUs, memory and GPUs, as the body of ``POST /v1/nodes``.

CPUs and memory come from the kernel, capped by the cgroup limits the agent runs under (a
container's quota is what its tasks can really use). GPUs come from NVML through the
``pynvml`` module of ``nvidia-ml-py``; every NVML call goes through one module object, the
``nvml`` argument, so tests can hand in a fake. A machine without the NVML library, without
a driver or without GPUs reports ``gpus: []``: discovery never raises over NVML.

:class:`GpuMonitor` keeps NVML open for the agent's lifetime so that health checks can watch
Xid events between heartbeats; :func:`discover` and :func:`gpu_health` are the one-shot
forms.

:func:`device_slots` turns the ``gpus`` of a registration into the devices the scheduler
places on: a GPU, or each MIG instance of a MIG-mode GPU. Server and agent both call it on
the same registration, so a slot index in an assignment means the same device to both.
:func:`gpu_domains` groups the GPUs into NVLink islands and NUMA domains.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "DeviceSlot",
    "GpuMonitor",
    "cpu_milli",
    "device_slots",
    "discover",
    "gpu_domains",
    "gpu_health",
    "memory_mib",
    "mig_share",
    "routable_address",
]

log = logging.getLogger("cplat.discovery")

MIB = 1 << 20
#: Xids that NVIDIA documents as caused by the application (bad kernels, a killed context),
#: not by the device; the Kubernetes device plugin skips the same set by default. A user's
#: segfaulting kernel must not take a healthy GPU out of the cluster.
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 109})
#: Error codes (pynvml's values) that mean "this query does not exist here": the check is
#: skipped rather than failing the device.
_NOT_SUPPORTED = (3, 13)  # NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_FUNCTION_NOT_FOUND
_BUS_ID = re.compile(r"^(?:([0-9a-fA-F]+):)?([0-9a-fA-F]+):([0-9a-fA-F]+)\.([0-9a-fA-F])$")


def _load_nvml(nvml: Any) -> Any:
    """Return ``nvml`` when given, else ``pynvml`` (None when it is not installed)."""
    if nvml is not None:
        return nvml
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def _text(value: Any) -> str:
    # Older pynvml releases return bytes where newer ones return str.
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def normalize_bus_id(bus_id: Any) -> str:
    """Return a PCI bus id in the sysfs spelling (``0000:07:00.0``, lower case).

    NVML writes eight-digit domains in upper case (``00000000:07:00.0``); sysfs and
    ``nvmlDeviceGetNvLinkRemotePciInfo`` callers need one spelling to match ids.
    """
    text = _text(bus_id).strip()
    m = _BUS_ID.match(text)
    if m is None:
        return text.lower()
    domain, bus, dev, fn = m.groups()
    return f"{int(domain or '0', 16):04x}:{int(bus, 16):02x}:{int(dev, 16):02x}.{int(fn, 16):x}"


class GpuMonitor:
    """NVML held open: device descriptions and health, with Xid events between checks.

    Parameters
    ----------
    nvml : module-like, optional
        The NVML binding (``pynvml`` when None). Anything with pynvml's functions and
        constants works, which is how tests inject a fake.
    root : Path
        Filesystem root for the sysfs NUMA fallback (tests point it at a fake tree).

    Notes
    -----
    :meth:`open` never raises: without NVML the monitor has no devices. Handles are in NVML
    index order, so ``handles[i]`` is GPU ``i``.
    """

    def __init__(self, nvml: Any = None, *, root: Path = Path("/")) -> None:
        self._requested = nvml
        self._root = root
        self.nvml: Any = None
        self.handles: list[Any] = []
        self._event_set: Any = None
        self._uuids: dict[str, int] = {}
        #: Xids seen per GPU index; sticky, since a critical Xid needs a reset to clear.
        self.xids: dict[int, int] = {}

    def __enter__(self) -> GpuMonitor:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        """Initialise NVML, list the devices and subscribe to Xid events where supported."""
        if self.nvml is not None:
            return
        nvml = _load_nvml(self._requested)
        if nvml is None:
            log.info("pynvml is not installed: reporting no GPUs")
            return
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as err:
            log.info("NVML unavailable (%s): reporting no GPUs", err)
            return
        self.nvml = nvml
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as err:
            log.warning("NVML cannot count devices (%s): reporting no GPUs", err)
            count = 0
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
            except nvml.NVMLError as err:
                # A device NVML cannot open is still a device of this machine: keep its slot
                # (so indices stay CUDA's) and report it unhealthy.
                log.warning("GPU %d cannot be opened: %s", index, err)
                handle = None
            self.handles.append(handle)
            uuid = self._query(handle, "nvmlDeviceGetUUID")
            if uuid is not None:
                self._uuids[_text(uuid)] = index
        self._subscribe_xids()

    def close(self) -> None:
        """Release the event set and shut NVML down (safe to call twice)."""
        nvml, self.nvml = self.nvml, None
        if nvml is None:
            return
        if self._event_set is not None:
            try:
                nvml.nvmlEventSetFree(self._event_set)
            except nvml.NVMLError:
                pass
            self._event_set = None
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError:
            pass
        self.handles = []
        self._uuids = {}

    def _query(self, handle: Any, fn: str, *args: Any) -> Any:
        """Call ``nvml.fn(handle, *args)``; None when unsupported or the handle is missing."""
        if handle is None:
            return None
        try:
            return getattr(self.nvml, fn)(handle, *args)
        except self.nvml.NVMLError as err:
            if _error_code(err) not in _NOT_SUPPORTED:
                log.debug("%s failed: %s", fn, err)
            return None
        except AttributeError:
            # A binding older than the query: same as the driver not supporting it.
            return None

    def _subscribe_xids(self) -> None:
        nvml = self.nvml
        kind = int(getattr(nvml, "nvmlEventTypeXidCriticalError", 0x8))
        try:
            event_set = nvml.nvmlEventSetCreate()
        except (nvml.NVMLError, AttributeError) as err:
            log.info("NVML events unavailable (%s): Xids are not watched", err)
            return
        registered = 0
        for handle in self.handles:
            if handle is None:
                continue
            supported = self._query(handle, "nvmlDeviceGetSupportedEventTypes")
            if supported is not None and not int(supported) & kind:
                continue
            try:
                nvml.nvmlDeviceRegisterEvents(handle, kind, event_set)
                registered += 1
            except nvml.NVMLError as err:
                log.debug("Xid events not available on a device: %s", err)
        if registered:
            self._event_set = event_set
        else:
            try:
                nvml.nvmlEventSetFree(event_set)
            except nvml.NVMLError:
                pass

    def poll_xids(self) -> dict[int, int]:
        """Drain pending Xid events without blocking; return every Xid seen so far by GPU."""
        nvml = self.nvml
        if nvml is None or self._event_set is None:
            return self.xids
        while True:
            try:
                data = nvml.nvmlEventSetWait(self._event_set, 0)
            except nvml.NVMLError:
                # NVML_ERROR_TIMEOUT is the "nothing pending" answer of a zero timeout.
                break
            xid = int(data.eventData)
            if xid in APPLICATION_XIDS:
                continue
            index = self._index_of(data.device)
            if index is not None and index not in self.xids:
                log.warning("GPU %d reported Xid %d: marking it unhealthy", index, xid)
                self.xids[index] = xid
        return self.xids

    def _index_of(self, handle: Any) -> int | None:
        uuid = self._query(handle, "nvmlDeviceGetUUID")
        if uuid is not None and _text(uuid) in self._uuids:
            return self._uuids[_text(uuid)]
        index = self._query(handle, "nvmlDeviceGetIndex")
        return int(index) if index is not None else None

    def health(self) -> list[dict[str, Any]]:
        """Health of every GPU: ``[{index, healthy, reason}]`` (see :func:`gpu_health`)."""
        if self.nvml is None:
            return []
        return gpu_health(self.handles, nvml=self.nvml, xids=self.poll_xids())

    def minor_numbers(self) -> dict[int, int]:
        """Map each GPU index to the minor number of its ``/dev/nvidia<minor>`` node.

        The minor usually equals the index, but not always (NVML orders by PCI bus, the
        driver numbers device nodes as it probes); the index stands in when NVML cannot say.
        """
        out: dict[int, int] = {}
        for index, handle in enumerate(self.handles):
            minor = self._query(handle, "nvmlDeviceGetMinorNumber")
            out[index] = int(minor) if minor is not None else index
        return out

    def devices(self) -> list[dict[str, Any]]:
        """Describe every GPU for registration (see :func:`discover` for the fields)."""
        if self.nvml is None:
            return []
        bus_ids: dict[str, int] = {}
        for index, handle in enumerate(self.handles):
            pci = self._query(handle, "nvmlDeviceGetPciInfo")
            if pci is not None:
                bus_ids[normalize_bus_id(pci.busId)] = index
        health = {h["index"]: h for h in self.health()}
        switched = {i for i, h in enumerate(self.handles) if self._on_nvswitch(h)}
        out = []
        for index, handle in enumerate(self.handles):
            out.append(self._describe(index, handle, bus_ids, switched, health[index]))
        return out

    def _describe(
        self,
        index: int,
        handle: Any,
        bus_ids: dict[str, int],
        switched: set[int],
        health: dict[str, Any],
    ) -> dict[str, Any]:
        name = self._query(handle, "nvmlDeviceGetName")
        model = _text(name) if name is not None else ""
        if model.startswith("NVIDIA "):
            model = model[len("NVIDIA ") :]
        mem = self._query(handle, "nvmlDeviceGetMemoryInfo")
        uuid = self._query(handle, "nvmlDeviceGetUUID")
        mig = self._query(handle, "nvmlDeviceGetMigMode")
        mig_on = mig is not None and int(mig[0]) == int(
            getattr(self.nvml, "NVML_DEVICE_MIG_ENABLE", 1)
        )
        peers = self._nvlink_peers(index, handle, bus_ids)
        if index in switched:
            # Behind NVSwitches every GPU reaches every other switched GPU over NVLink.
            peers |= switched - {index}
        return {
            "index": index,
            "uuid": _text(uuid) if uuid is not None else "",
            "model": model,
            "memory_mib": int(mem.total) // MIB if mem is not None else 0,
            "mig_mode": mig_on,
            "mig_instances": self._mig_instances(handle) if mig_on else [],
            "nvlink_peers": sorted(peers),
            "numa_node": self._numa_node(handle),
            "healthy": health["healthy"],
            "reason": health["reason"],
        }

    def _links(self, handle: Any) -> Iterator[int]:
        """Yield the indices of the device's active NVLinks."""
        enabled = int(getattr(self.nvml, "NVML_FEATURE_ENABLED", 1))
        for link in range(int(getattr(self.nvml, "NVML_NVLINK_MAX_LINKS", 18))):
            try:
                state = self.nvml.nvmlDeviceGetNvLinkState(handle, link)
            except self.nvml.NVMLError:
                # Links past the device's count answer "invalid argument" or "not supported";
                # they are not always contiguous, so keep scanning.
                continue
            except AttributeError:
                return
            if int(state) == enabled:
                yield link

    def _nvlink_peers(self, index: int, handle: Any, bus_ids: dict[str, int]) -> set[int]:
        peers: set[int] = set()
        if handle is None:
            return peers
        for link in self._links(handle):
            remote = self._query(handle, "nvmlDeviceGetNvLinkRemotePciInfo", link)
            if remote is None:
                continue
            peer = bus_ids.get(normalize_bus_id(remote.busId))
            if peer is not None and peer != index:
                peers.add(peer)
        return peers

    def _on_nvswitch(self, handle: Any) -> bool:
        if handle is None:
            return False
        switch = int(getattr(self.nvml, "NVML_NVLINK_DEVICE_TYPE_SWITCH", 2))
        for link in self._links(handle):
            kind = self._query(handle, "nvmlDeviceGetNvLinkRemoteDeviceType", link)
            if kind is not None and int(kind) == switch:
                return True
        return False

    def _profile_names(self, handle: Any) -> dict[int, str]:
        """Map GPU instance profile ids to NVIDIA's names ("3g.40gb") on one device."""
        names: dict[int, str] = {}
        for index in range(int(getattr(self.nvml, "NVML_GPU_INSTANCE_PROFILE_COUNT", 0))):
            info = self._query(handle, "nvmlDeviceGetGpuInstanceProfileInfo", index)
            name = getattr(info, "name", None)
            if info is not None and name:
                names[int(info.id)] = _text(name).removeprefix("MIG ")
        return names

    def _mig_instances(self, handle: Any) -> list[dict[str, Any]]:
        count = self._query(handle, "nvmlDeviceGetMaxMigDeviceCount")
        names = self._profile_names(handle)
        out = []
        for slot in range(int(count or 0)):
            # Empty slots answer NVML_ERROR_NOT_FOUND: MIG devices need not be contiguous.
            mig = self._query(handle, "nvmlDeviceGetMigDeviceHandleByIndex", slot)
            if mig is None:
                continue
            gi = self._query(mig, "nvmlDeviceGetGpuInstanceId")
            ci = self._query(mig, "nvmlDeviceGetComputeInstanceId")
            mem = self._query(mig, "nvmlDeviceGetMemoryInfo")
            uuid = self._query(mig, "nvmlDeviceGetUUID")
            profile = None
            if gi is not None:
                inst = self._query(handle, "nvmlDeviceGetGpuInstanceById", int(gi))
                info = self._query(inst, "nvmlGpuInstanceGetInfo")
                if info is not None:
                    profile = names.get(int(info.profileId))
            attrs = self._query(mig, "nvmlDeviceGetAttributes") if profile is None else None
            if attrs is not None:
                # NVIDIA's names round memory up to whole GB: 3g.40gb has 39.25 GiB.
                gb = math.ceil(int(attrs.memorySizeMB) / 1024)
                profile = f"{int(attrs.gpuInstanceSliceCount)}g.{gb}gb"
            out.append(
                {
                    "gi_id": int(gi) if gi is not None else None,
                    "ci_id": int(ci) if ci is not None else None,
                    "uuid": _text(uuid) if uuid is not None else "",
                    "profile": profile,
                    "memory_mib": int(mem.total) // MIB if mem is not None else 0,
                }
            )
        return out

    def _numa_node(self, handle: Any) -> int:
        node = self._query(handle, "nvmlDeviceGetNumaNodeId")
        if node is not None:
            return int(node)
        pci = self._query(handle, "nvmlDeviceGetPciInfo")
        if pci is None:
            return -1
        path = self._root / "sys/bus/pci/devices" / normalize_bus_id(pci.busId) / "numa_node"
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            return -1


def _error_code(err: BaseException) -> int | None:
    value = getattr(err, "value", None)
    return value if isinstance(value, int) else None


def gpu_health(
    handles: Sequence[Any], *, nvml: Any = None, xids: dict[int, int] | None = None
) -> list[dict[str, Any]]:
    """Health of each device: ``[{index, healthy, reason}]`` with ``handles[i]`` GPU ``i``.

    A device is unhealthy when it has volatile uncorrected ECC errors, a page retirement or
    row remapping pending (or a remapping failure), a temperature at or above its slowdown
    threshold, or a critical Xid in ``xids``; a handle of None (a device NVML cannot open)
    is unhealthy too. A check the device does not support is skipped.

    Parameters
    ----------
    handles : sequence
        NVML device handles in index order (NVML must be initialised).
    nvml : module-like, optional
        The NVML binding the handles came from (``pynvml`` when None).
    xids : dict, optional
        Critical Xids seen per GPU index (see :meth:`GpuMonitor.poll_xids`).

    Returns
    -------
    list of dict
        One entry per handle; ``reason`` is "" for a healthy device, else the first
        failing check in words.
    """
    nv = _load_nvml(nvml)
    seen = xids or {}
    out: list[dict[str, Any]] = []
    for index, handle in enumerate(handles):
        reason = None if handle is not None else "NVML cannot open the device"
        if nv is not None and handle is not None:
            reason = _check(nv, handle)
        if reason is None and index in seen:
            reason = f"Xid {seen[index]}"
        out.append({"index": index, "healthy": reason is None, "reason": reason or ""})
    return out


def _check(nv: Any, handle: Any) -> str | None:
    """Return the first failing health check of one device in words, or None."""

    def ask(fn: str, *args: Any) -> Any:
        try:
            return getattr(nv, fn)(handle, *args)
        except nv.NVMLError as err:
            if _error_code(err) == getattr(nv, "NVML_ERROR_GPU_IS_LOST", 15):
                raise
            return None
        except AttributeError:
            return None

    try:
        ecc = ask(
            "nvmlDeviceGetTotalEccErrors",
            getattr(nv, "NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1),
            getattr(nv, "NVML_VOLATILE_ECC", 0),
        )
        if ecc is not None and int(ecc) > 0:
            return f"{int(ecc)} uncorrected ECC errors"
        enabled = int(getattr(nv, "NVML_FEATURE_ENABLED", 1))
        pending = ask("nvmlDeviceGetRetiredPagesPendingStatus")
        if pending is not None and int(pending) == enabled:
            return "page retirement pending (needs a GPU reset)"
        remap = ask("nvmlDeviceGetRemappedRows")
        if remap is not None:
            _corr, _unc, remap_pending, remap_failed = (int(v) for v in remap)
            if remap_failed:
                return "row remapping failed"
            if remap_pending:
                return "row remapping pending (needs a GPU reset)"
        temp = ask("nvmlDeviceGetTemperature", getattr(nv, "NVML_TEMPERATURE_GPU", 0))
        slowdown = ask(
            "nvmlDeviceGetTemperatureThreshold",
            getattr(nv, "NVML_TEMPERATURE_THRESHOLD_SLOWDOWN", 1),
        )
        if temp is not None and slowdown is not None and 0 < int(slowdown) <= int(temp):
            return f"temperature {int(temp)} C at or above slowdown threshold {int(slowdown)} C"
    except nv.NVMLError as err:
        return f"GPU is lost ({err})"
    return None


def _cgroup_dirs(root: Path, controller: str) -> list[Path]:
    """Cgroup directories whose limits apply to this process, innermost first.

    Limits of every ancestor apply, so all of them are read. A path from /proc/self/cgroup
    that does not exist under the mount (a container without a cgroup namespace sees the
    host's path but has its own cgroup mounted at the top) falls back to the mount itself.
    """
    v2 = root / "sys/fs/cgroup"
    v1 = v2 / controller
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    rel = None
    base = v2
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, path = parts
        if hid == "0" and controllers == "":
            rel, base = path, v2
        elif controller in controllers.split(","):
            rel, base = path, v1
            break
    if rel is None:
        base = v1 if v1.is_dir() else v2
        rel = "/"
    dirs = []
    here = base / rel.lstrip("/")
    while True:
        if here.is_dir():
            dirs.append(here)
        if here == base or base not in here.parents:
            break
        here = here.parent
    if base not in dirs and base.is_dir():
        dirs.append(base)
    return dirs


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cpu_milli(root: Path = Path("/")) -> int:
    """Usable CPU in millicores: the affinity mask, capped by any cgroup CPU quota.

    Parameters
    ----------
    root : Path
        Filesystem root holding ``proc`` and ``sys`` (tests point it at a fake tree).
    """
    try:
        milli = len(os.sched_getaffinity(0)) * 1000
    except AttributeError:  # not Linux
        milli = (os.cpu_count() or 1) * 1000
    for d in _cgroup_dirs(root, "cpu"):
        v2 = _read(d / "cpu.max")
        if v2 is not None:
            quota, _, period = v2.partition(" ")
            if quota != "max" and period:
                milli = min(milli, int(quota) * 1000 // int(period))
            continue
        quota_us, period_us = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
        if quota_us and period_us and int(quota_us) > 0:
            milli = min(milli, int(quota_us) * 1000 // int(period_us))
    return max(milli, 1)


def memory_mib(root: Path = Path("/")) -> int:
    """Usable memory in MiB: MemTotal, capped by any cgroup memory limit.

    Parameters
    ----------
    root : Path
        Filesystem root holding ``proc`` and ``sys`` (tests point it at a fake tree).
    """
    total = 0
    meminfo = _read(root / "proc/meminfo") or ""
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            total = int(line.split()[1]) * 1024 // MIB
            break
    if not total:
        # No procfs (not Linux): the page count is the next best thing.
        try:
            total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // MIB
        except (ValueError, OSError):
            total = 0
    for d in _cgroup_dirs(root, "memory"):
        # cgroup v1 spells "unlimited" as a huge page-rounded number; min() absorbs it.
        limit = _read(d / "memory.max") or _read(d / "memory.limit_in_bytes")
        if limit and limit != "max":
            mib = int(limit) // MIB
            total = min(total, mib) if total else mib
    return total


def routable_address(route_to: str | None = None) -> str:
    """Return an address others can reach this host at; 127.0.0.1 when none is found.

    A UDP socket "connected" to ``route_to`` (the server, or a public address) sends nothing
    but makes the kernel pick the interface packets would leave by, which is the address a
    peer on that path can use.

    Parameters
    ----------
    route_to : str, optional
        Host to route towards (default: a public address).
    """
    target = route_to or "8.8.8.8"
    try:
        family = socket.AF_INET6 if ":" in target else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((target, 9))
            addr = str(s.getsockname()[0])
        if addr and not addr.startswith("0.") and addr != "::":
            return addr
    except OSError:
        pass
    try:
        addr = socket.gethostbyname(socket.gethostname())
        if not addr.startswith("127."):
            return addr
    except OSError:
        pass
    return "127.0.0.1"


@contextmanager
def _monitor(nvml: Any, monitor: GpuMonitor | None, root: Path) -> Iterator[GpuMonitor]:
    if monitor is not None:
        monitor.open()
        yield monitor
        return
    with GpuMonitor(nvml, root=root) as fresh:
        yield fresh


def discover(
    name: str | None = None,
    *,
    nvml: Any = None,
    monitor: GpuMonitor | None = None,
    route_to: str | None = None,
    root: Path = Path("/"),
) -> dict[str, Any]:
    """Describe this machine as the registration body of ``POST /v1/nodes``.

    Parameters
    ----------
    name : str, optional
        Node name (default: the hostname).
    nvml : module-like, optional
        NVML binding (default ``pynvml``); ignored when ``monitor`` is given.
    monitor : GpuMonitor, optional
        An open monitor to reuse (the agent keeps one for heartbeats).
    route_to : str, optional
        Host whose route picks ``address`` (the agent passes its server's host).
    root : Path
        Filesystem root for ``/proc`` and ``/sys`` (tests point it at a fake tree).

    Returns
    -------
    dict
        ``name``, ``hostname``, ``address``, ``cpu_milli``, ``memory_mib`` and ``gpus``: one
        dict per device with ``index``, ``uuid``, ``model`` (NVML's name without "NVIDIA "),
        ``memory_mib``, ``mig_mode``, ``mig_instances`` (``[{gi_id, ci_id, uuid, profile,
        memory_mib}]``), ``nvlink_peers`` (local indices), ``numa_node`` (-1 when unknown),
        ``healthy`` and ``reason``.
    """
    hostname = socket.gethostname()
    with _monitor(nvml, monitor, root) as mon:
        gpus = mon.devices()
    return {
        "name": name or hostname,
        "hostname": hostname,
        "address": routable_address(route_to),
        "cpu_milli": cpu_milli(root),
        "memory_mib": memory_mib(root),
        "gpus": gpus,
    }


# Device slots ----------------------------------------------------------------------------

#: A MIG instance is a whole number of eighths of its GPU's memory (A100/H100/H200: 8 memory
#: slices; A30: 4, i.e. 2 eighths each); its share is snapped to the nearest eighth.
MIG_MEMORY_SLICES = 8
#: Compute slices of a full GPU: the denominator of a profile's ``Ng`` when memory is unknown.
MIG_COMPUTE_SLICES = 7
_MIG_UUID = re.compile(r"^MIG-[A-Za-z0-9/_.-]{1,120}$")
_PROFILE = re.compile(r"^(\d+)g\.")


@dataclass(frozen=True)
class DeviceSlot:
    """One device the scheduler can place a task on.

    Attributes
    ----------
    gpu
        Index of the physical GPU.
    milli
        Share of the GPU the slot is, in milli-GPU (1000: the whole GPU).
    uuid
        The device to hand a task: the MIG instance's UUID, or "" for a whole GPU (tasks
        get its index).
    profile
        The MIG profile (``"3g.40gb"``); "" for a whole GPU.
    """

    gpu: int
    milli: int = 1000
    uuid: str = ""
    profile: str = ""

    @property
    def mig(self) -> bool:
        """Whether this slot is a MIG instance."""
        return bool(self.uuid)

    def visible(self) -> str:
        """Return the ``CUDA_VISIBLE_DEVICES`` entry of this slot."""
        return self.uuid or str(self.gpu)


def mig_share(instance: Mapping[str, Any], gpu_memory_mib: int) -> int:
    """Return the share of its GPU a MIG instance is, in milli-GPU.

    The instance's memory over the GPU's, snapped to the nearest eighth (MIG cuts memory in
    eighths, and a driver reports a little less than the slices hold: 1g.10gb has 9.5 of the
    A100's 80 GiB); without memory sizes, the profile's ``Ng`` compute slices over seven.
    At least one eighth, at most the whole GPU.
    """
    mem = instance.get("memory_mib")
    eighth = 1000 // MIG_MEMORY_SLICES
    if isinstance(mem, int) and not isinstance(mem, bool) and mem > 0 and gpu_memory_mib > 0:
        slices = round(MIG_MEMORY_SLICES * mem / gpu_memory_mib)
        return max(1, min(MIG_MEMORY_SLICES, slices)) * eighth
    m = _PROFILE.match(str(instance.get("profile") or ""))
    if m:
        return max(eighth, min(1000, int(m.group(1)) * 1000 // MIG_COMPUTE_SLICES))
    return eighth


def device_slots(gpus: Sequence[Mapping[str, Any]]) -> list[DeviceSlot]:
    """Return the schedulable devices of a registration's ``gpus``, in slot order.

    GPUs in index order; a MIG-mode GPU contributes one slot per MIG instance with a valid
    UUID (by GPU instance, then compute instance id), a GPU in MIG mode without instances
    none. Without MIG, slot ``i`` is GPU ``i``.
    """
    out: list[DeviceSlot] = []
    for gpu in sorted(gpus, key=lambda g: int(g["index"])):
        index = int(gpu["index"])
        if gpu.get("mig_mode") is not True:
            out.append(DeviceSlot(index))
            continue
        raw = gpu.get("mig_instances")
        instances = [
            i
            for i in (raw if isinstance(raw, list) else [])
            if isinstance(i, Mapping) and _MIG_UUID.match(str(i.get("uuid") or ""))
        ]

        def order(i: Mapping[str, Any]) -> tuple[int, int, str]:
            gi, ci = i.get("gi_id"), i.get("ci_id")
            return (
                gi if isinstance(gi, int) else 1 << 30,
                ci if isinstance(ci, int) else 1 << 30,
                str(i["uuid"]),
            )

        memory = gpu.get("memory_mib")
        total = memory if isinstance(memory, int) and not isinstance(memory, bool) else 0
        for inst in sorted(instances, key=order):
            out.append(
                DeviceSlot(
                    index, mig_share(inst, total), str(inst["uuid"]), str(inst.get("profile") or "")
                )
            )
    return out


def gpu_domains(gpus: Sequence[Mapping[str, Any]]) -> tuple[list[int], list[int]]:
    """Return the NVLink island and NUMA domain of every GPU (by index), dense and node-local.

    Islands are the connected groups of ``nvlink_peers`` (a GPU without links is an island of
    its own); NUMA domains follow ``numa_node``, with unknown (-1) nodes forming one domain.
    """
    indices = sorted(int(g["index"]) for g in gpus)
    pos = {g: i for i, g in enumerate(indices)}
    parent = list(range(len(indices)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    numa_of: dict[int, int] = {}
    for gpu in gpus:
        i = pos[int(gpu["index"])]
        peers = gpu.get("nvlink_peers")
        for peer in peers if isinstance(peers, list) else []:
            if isinstance(peer, int) and peer in pos:
                a, b = root(i), root(pos[peer])
                if a != b:
                    parent[max(a, b)] = min(a, b)
        node = gpu.get("numa_node")
        numa_of[i] = node if isinstance(node, int) and not isinstance(node, bool) else -1
    islands: dict[int, int] = {}
    nvlink = [islands.setdefault(root(i), len(islands)) for i in range(len(indices))]
    domains: dict[int, int] = {}
    numa = [domains.setdefault(numa_of.get(i, -1), len(domains)) for i in range(len(indices))]
    return nvlink, numa
