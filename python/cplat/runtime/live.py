"""The live cluster: nodes that join, leave and fail around the one ``Scheduler``.

The native cluster state has a fixed set of nodes, so a node joining (or changing shape) or a
quota change rebuilds the scheduler: running jobs are put back exactly where their processes
run (``Scheduler.restore``), pending jobs are queued again in their submission order. Node
states map onto the engine's node flags; an unhealthy GPU is held by a placeholder job so
that nothing new lands on it. Rebuilds also drop the finished jobs the native queue keeps.

Everything a scheduler profile selects reaches the live engine as it reaches the simulator:

- a queue sort (fair share, DRF, multifactor) sets the priorities before every cycle. Its
  decayed usage comes from the jobs that really ran: it is carried from one scheduler to the
  next across rebuilds, and seeded after a restart from the finished and running jobs the store
  holds (:meth:`LiveCluster.add_history`);
- reservations and maintenance windows (:class:`LiveReservation`) become the engine's advance
  reservations; a window that drains its nodes says when (:meth:`LiveCluster.due_drains`);
- exclusive and elastic jobs (``LiveJob.exclusive``, ``LiveJob.min_tasks``);
- the gang solver: with ``cp-sat`` the gangs a cycle starts move to the solver's placement when
  it is strictly better (:func:`cplat.policy.gang.improve_started`);
- the NVLink islands and NUMA domains the agents discover, so multi-GPU tasks get devices of
  one island;
- MIG instances as devices of their own (:func:`cplat.runtime.discovery.device_slots`): a
  device slot per instance, padded by a permanent placeholder to the instance's share, so a GPU
  share lands on an instance at least as large as it asked for and whole-GPU tasks never do;
- preemption with the grace period: an evicted job keeps its resources while it checkpoints,
  and is requeued when its tasks are gone (:meth:`LiveCluster.release_evicted`) or the grace
  has passed.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from cplat import _core
from cplat.config import SchedulerConfig
from cplat.errors import InputError
from cplat.model import MILLI_GPU, GpuModels, NodeTable
from cplat.policy.fairshare import (
    DRF,
    FairShare,
    MultifactorPriority,
    PastUsage,
    UsageSnapshot,
    make_queue_sort,
)
from cplat.policy.gang import GangRequest, GangSolver, improve_started
from cplat.profile import POLICIES, Profile
from cplat.runtime.discovery import DeviceSlot, device_slots, gpu_domains
from cplat.scheduler import (
    F64,
    I32,
    Checkpointing,
    JobColumns,
    QueuePolicy,
    Quota,
    Quotas,
    Scheduler,
)

log = logging.getLogger("cplat.live")

#: Node states and the engine flags they set.
NODE_FLAGS = {"up": 0, "down": 1, "cordoned": 2, "draining": 2 | 4}
#: Rebuild to drop finished jobs once the native queue holds this many more than it needs.
COMPACT_AFTER = 100_000
HOLDER_PRIORITY = 2**30
#: Nominal quota of a reservation owner without a quota of its own: the engine knows owners
#: only as quota projects, and this one must never limit the project.
UNLIMITED = 2**62
#: The service's default profile when ``cplat serve`` is given none.
DEFAULT_QUEUE = QueuePolicy(order="priority", backfill="easy", topology_aware=True)


@dataclass
class LiveNode:
    """A node as the scheduler sees it.

    ``num_gpu`` counts the devices the engine places on: GPUs, or MIG instances of MIG-mode
    GPUs, as ``slots`` describes them (empty: slot ``i`` is GPU ``i``). ``unhealthy`` holds
    indices of physical GPUs; ``nvlink`` and ``numa`` give each physical GPU's island and
    domain (empty: one island, one domain).
    """

    name: str
    cpu_milli: int
    memory_mib: int
    num_gpu: int = 0
    gpu_model: str = ""
    rack: int = 0
    spine: int = 0
    state: str = "up"
    unhealthy: set[int] = field(default_factory=set)
    slots: tuple[DeviceSlot, ...] = ()
    nvlink: tuple[int, ...] = ()
    numa: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.slots and len(self.slots) != self.num_gpu:
            raise ValueError(f"node {self.name}: {len(self.slots)} slots for {self.num_gpu} GPUs")

    def devices(self) -> tuple[DeviceSlot, ...]:
        """Return the node's device slots (whole GPUs unless MIG instances are listed)."""
        return self.slots or _whole_gpus(self.num_gpu)

    @property
    def num_physical(self) -> int:
        """Physical GPUs of the node."""
        return max((s.gpu for s in self.slots), default=-1) + 1 if self.slots else self.num_gpu

    def shape(self) -> tuple[Any, ...]:
        """Return what the native state is built from (a change needs a rebuild)."""
        return (
            self.cpu_milli,
            self.memory_mib,
            self.num_gpu,
            self.gpu_model,
            self.rack,
            self.spine,
            self.slots,
            self.nvlink,
            self.numa,
        )


@functools.lru_cache(maxsize=64)
def _whole_gpus(n: int) -> tuple[DeviceSlot, ...]:
    # Shared by every node with n whole GPUs (slots are frozen): a rebuild of 10,000 nodes
    # asks for them tens of thousands of times.
    return tuple(DeviceSlot(i) for i in range(n))


def unhealthy_gpus(gpus: Sequence[Mapping[str, Any]]) -> set[int]:
    """Return the GPUs of a registration the scheduler must not place on (unhealthy ones).

    MIG-mode GPUs are not among them: their instances are devices of their own.
    """
    return {int(g["index"]) for g in gpus if g.get("healthy") is False}


def node_from_spec(name: str, spec: Mapping[str, Any], state: str = "up") -> LiveNode:
    """Return the scheduler's view of a registered node (its stored ``spec``).

    GPUs become device slots (:func:`~cplat.runtime.discovery.device_slots`), their NVLink
    peers and NUMA nodes islands and domains (:func:`~cplat.runtime.discovery.gpu_domains`).
    """
    gpus = list(spec.get("gpus", []))
    slots = device_slots(gpus)
    nvlink, numa = gpu_domains(gpus) if gpus else ([], [])
    models = [str(g.get("model", "")) for g in gpus]
    return LiveNode(
        name=name,
        cpu_milli=int(spec.get("cpu_milli", 0)),
        memory_mib=int(spec.get("memory_mib", 0)),
        num_gpu=len(slots),
        gpu_model=models[0] if models else "",
        rack=int(spec.get("rack", 0)),
        spine=int(spec.get("spine", 0)),
        state=state,
        unhealthy=unhealthy_gpus(gpus),
        # Slots are kept whenever slot i is not GPU i: MIG instances, or a MIG-mode GPU
        # without usable instances that leaves a gap in the indices.
        slots=tuple(slots) if any(s.mig or s.gpu != i for i, s in enumerate(slots)) else (),
        nvlink=tuple(nvlink),
        numa=tuple(numa),
    )


@dataclass(frozen=True)
class LiveJob:
    """What the scheduler needs of a job: identical tasks, placed all or nothing.

    ``exclusive`` jobs run alone on their nodes; a job with ``1 <= min_tasks < num_tasks`` is
    elastic (it runs with ``min_tasks`` up to ``num_tasks`` tasks).
    """

    job_id: int
    project: str
    submit: int
    requested: int
    num_tasks: int
    cpu_milli: int
    memory_mib: int
    num_gpu: int
    gpu_milli: int
    gpu_models: tuple[str, ...] = ()
    priority: int = 0
    user: str = ""
    exclusive: bool = False
    min_tasks: int = 0

    @property
    def elastic(self) -> bool:
        """Whether the job may run with fewer than ``num_tasks`` tasks."""
        return 1 <= self.min_tasks < self.num_tasks


def job_from_spec(
    job_id: int, project: str, user: str, submitted_at: float, spec: Mapping[str, Any]
) -> LiveJob:
    """Return the scheduler's view of a stored job's spec (as ``POST /v1/jobs`` stores it)."""
    tasks = spec["tasks"]
    res = tasks["resources"]
    count = int(tasks["count"])
    return LiveJob(
        job_id=job_id,
        project=project,
        submit=int(submitted_at),
        requested=int(spec["max_runtime"]),
        num_tasks=count,
        cpu_milli=int(res["cpu_milli"]),
        memory_mib=int(res["memory_mib"]),
        num_gpu=int(res["num_gpu"]),
        gpu_milli=int(res["gpu_milli"]),
        gpu_models=tuple(res["gpu_models"]),
        priority=int(spec["priority"]),
        user=user,
        exclusive=bool(spec.get("exclusive", False)),
        min_tasks=int(tasks.get("min_count", count)),
    )


@dataclass(frozen=True)
class LiveReservation:
    """Nodes held for a project (or for nobody: a maintenance window) during ``[start, end)``.

    Other projects' jobs may use the nodes only if they end, by their ``max_runtime``, before
    ``start``. ``drain`` marks a maintenance window whose nodes are drained at ``start`` and
    come back at ``end`` (see :meth:`LiveCluster.due_drains`).
    """

    id: int
    start: int
    end: int
    nodes: tuple[str, ...]
    owner: str = ""
    drain: bool = False

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise InputError("a reservation must end after it starts", field="end")
        if not self.nodes:
            raise InputError("a reservation needs at least one node", field="nodes")
        if self.drain and self.owner:
            raise InputError("a drain window belongs to nobody (no owner)", field="drain")


Placement = list[tuple[str, list[int]]]


class _LiveSort:
    """The profile's queue sort, blind to placeholders (they are not anybody's usage)."""

    def __init__(self, inner: FairShare | DRF | MultifactorPriority) -> None:
        self.inner = inner
        self._skip = np.zeros(0, dtype=bool)

    def add_jobs(self, jobs: JobColumns, index: I32) -> None:
        self.inner.add_jobs(jobs, index)
        if len(index):
            n = int(index.max()) + 1
            if len(self._skip) < n:
                self._skip = np.concatenate([self._skip, np.zeros(n - len(self._skip), bool)])
            self._skip[index] = jobs.job_id < 0

    def on_start(self, jobs: I32, now: int) -> None:
        self.inner.on_start(jobs[~self._skip[jobs]], now)

    def on_finish(self, jobs: I32, now: int) -> None:
        self.inner.on_finish(jobs[~self._skip[jobs]], now)

    def priorities(self, pending: I32, now: int) -> F64:
        return self.inner.priorities(pending, now)


class LiveCluster:
    """Nodes, quotas, reservations and jobs of the running service around one :class:`Scheduler`.

    Parameters
    ----------
    placement, queue, checkpoint
        The scheduler's policies (as in the simulator).
    seed
        Tie-breaking seed.
    queue_sort
        ``(name, options)`` of a queue-sort plugin (see
        :func:`~cplat.policy.fairshare.make_queue_sort`); the queue order becomes ``priority``,
        as in ``cplat sim``.
    gang
        The gang solver.
    """

    def __init__(
        self,
        placement: Profile,
        queue: QueuePolicy,
        checkpoint: Checkpointing | None = None,
        seed: int = 0,
        queue_sort: tuple[str, Mapping[str, Any]] | None = None,
        gang: GangSolver | None = None,
    ) -> None:
        if queue_sort is not None:
            _check_queue_sort(*queue_sort)
            if queue.order != "priority":
                queue = replace(queue, order="priority")
        self.profile = placement
        self.queue = queue
        self.checkpoint = checkpoint
        self.seed = seed
        self.queue_sort = (queue_sort[0], dict(queue_sort[1])) if queue_sort else None
        self.gang = gang or GangSolver()
        self.nodes: list[LiveNode] = []
        self._node_index: dict[str, int] = {}
        self.quotas: Quotas | None = None
        self._jobs: dict[int, LiveJob] = {}
        self._parked: dict[int, str] = {}  # job -> why it cannot be queued at all
        self._order: list[int] = []  # submission order of jobs not parked
        self._idx: dict[int, int] = {}  # job id -> scheduler index
        self._job_of: dict[int, int] = {}  # scheduler index -> job id
        # Placeholders: on the device slots of unhealthy GPUs (removed when they heal), and
        # padding each MIG slot down to its instance's share (for good).
        self._holders: dict[tuple[str, int], int] = {}
        self._pads: dict[tuple[str, int], int] = {}
        self._holder_milli: dict[int, int] = {}
        self._preempted: list[int] = []
        self._resized: list[int] = []
        self._evicted: dict[int, int] = {}  # job in its grace -> when it must be stopped
        self.lost: list[int] = []  # running jobs a rebuild could not put back
        self.sched: Scheduler | None = None
        self.models = GpuModels(())
        self._now = 0
        self._sort: _LiveSort | None = None
        self._history: list[PastUsage] = []  # usage found before the plugin existed
        self._usage: UsageSnapshot | None = None
        self.reservations: dict[int, LiveReservation] = {}
        self._drains_begun: set[int] = set()
        self._undrain: list[str] = []  # nodes of drain windows removed while they drained
        self.moved: list[int] = []  # gangs the last cycle moved to the solver's placement
        # Rebuilds are deferred to the next cycle (or restore), so that a burst of nodes
        # registering costs one rebuild, not one each. `_built` nodes are in `sched`.
        self._dirty = False
        self._built = 0

    @classmethod
    def from_config(cls, config: SchedulerConfig | None, seed: int = 0) -> LiveCluster:
        """Build the live cluster a ``cplat serve --profile`` file describes (None: defaults).

        Everything the profile selects is used: placement, queue (order, backfill,
        preemption with its grace period, topology), queue sort, checkpoints and the gang
        solver. Quotas are the service's own (``/v1/quotas``), not the profile's.
        """
        if config is None:
            return cls(POLICIES["bestfit"], DEFAULT_QUEUE, seed=seed)
        sort = None
        if config.queue_sort is not None:
            options = {k: v for k, v in config.queue_sort.items() if k != "name"}
            sort = (str(config.queue_sort["name"]), options)
        return cls(
            config.placement,
            config.queue,
            config.checkpoint,
            seed=seed,
            queue_sort=sort,
            gang=config.gang,
        )

    # Nodes ----------------------------------------------------------------------------
    def upsert_node(self, node: LiveNode, now: int) -> None:
        """Add a node or update one (a new shape rebuilds the scheduler)."""
        self._now = now
        i = self._node_index.get(node.name)
        if i is None:
            self._node_index[node.name] = len(self.nodes)
            self.nodes.append(node)
            self._dirty = True
            return
        old = self.nodes[i]
        self.nodes[i] = node
        if old.shape() != node.shape():
            self._dirty = True
        else:
            self._apply_node(i)

    def flush(self, now: int) -> None:
        """Rebuild now if nodes, quotas or reservations changed since the last build."""
        if self._dirty:
            self._rebuild(now)

    def _built_index(self, name: str) -> int | None:
        i = self._node_index.get(name)
        return i if i is not None and self.sched is not None and i < self._built else None

    def node(self, name: str) -> LiveNode | None:
        """Return a node by name."""
        i = self._node_index.get(name)
        return None if i is None else self.nodes[i]

    def set_node_state(self, name: str, state: str) -> None:
        """Mark a node ``up``, ``down``, ``cordoned`` or ``draining``."""
        i = self._node_index[name]
        self.nodes[i].state = state
        self._apply_node(i)

    def set_unhealthy(self, name: str, gpus: Iterable[int]) -> None:
        """Set which physical GPUs of a node are unhealthy (nothing new is placed on them)."""
        i = self._node_index[name]
        self.nodes[i].unhealthy = {g for g in gpus if 0 <= g < self.nodes[i].num_physical}
        self._apply_node(i)

    def devices(self, name: str, slots: Sequence[int]) -> list[DeviceSlot]:
        """Return the devices behind slot indices of node ``name`` (as a placement lists them)."""
        node = self.nodes[self._node_index[name]]
        devs = node.devices()
        return [devs[s] for s in slots]

    def _apply_node(self, i: int) -> None:
        if self.sched is None or i >= self._built:
            return  # the next rebuild applies it
        node = self.nodes[i]
        flags = int(self.sched.state.flags[i]) & ~0b111
        self.sched.state.set_flags(i, flags | NODE_FLAGS[node.state])
        if not node.unhealthy and not self._holders:
            return  # nothing to hold back, nothing held (the common case)
        devs = node.devices()
        for (name, slot), idx in list(self._holders.items()):
            if name == node.name and devs[slot].gpu not in node.unhealthy:
                if self.sched.job_state(idx) == "running":
                    self.sched.finish(np.asarray([idx], dtype=np.int32), self._now)
                del self._holders[(name, slot)]
                self._holder_milli.pop(idx, None)
        for slot, dev in enumerate(devs):
            if dev.gpu in node.unhealthy and (node.name, slot) not in self._holders:
                self._holders[(node.name, slot)] = self._add_holder(dev.milli)
        self._hold_gpus()

    def _add_holder(self, milli: int) -> int:
        assert self.sched is not None
        # Top priority and no project: a placeholder is never a preemption victim.
        hold = LiveJob(-1, "", self._now, 1, 1, 0, 0, 1, milli, priority=HOLDER_PRIORITY)
        idx = int(self.sched.add_jobs(_columns([hold], self.models))[0])
        self._holder_milli[idx] = milli
        return idx

    def _hold_gpus(self) -> None:
        """Put placeholders on unhealthy GPUs as soon as their users are gone."""
        if self.sched is None:
            return
        for (name, slot), idx in self._holders.items():
            if self.sched.job_state(idx) != "running":
                self.sched.restore(idx, self._now, [self._node_index[name]], [slot])

    def _held(self) -> tuple[int, int]:
        """Placeholders running now and the milli-GPU they hold."""
        if self.sched is None:
            return (0, 0)
        count = milli = 0
        for idx in [*self._holders.values(), *self._pads.values()]:
            if self.sched.job_state(idx) == "running":
                count += 1
                milli += self._holder_milli.get(idx, MILLI_GPU)
        return count, milli

    # Quotas ---------------------------------------------------------------------------
    def set_quotas(self, quotas: Quotas | None, now: int) -> None:
        """Replace the quotas (rebuilds the scheduler)."""
        self.quotas = quotas
        self._now = now
        self._dirty = True

    def _effective_quotas(self) -> Quotas | None:
        """Return the quotas, plus an unlimited one for each reservation owner that has none."""
        owners = sorted({r.owner for r in self.reservations.values() if r.owner})
        have = {q.project for q in self.quotas.quotas} if self.quotas is not None else set()
        extra = [Quota(o, (UNLIMITED,) * 3) for o in owners if o not in have]
        if not extra:
            return self.quotas
        base = list(self.quotas.quotas) if self.quotas is not None else []
        limits = dict(getattr(self.quotas, "_limits", {})) if self.quotas is not None else {}
        return Quotas(base + extra, limits)

    # Reservations ---------------------------------------------------------------------
    def add_reservation(self, res: LiveReservation) -> None:
        """Hold nodes for a project (or a maintenance window) from now on.

        Nodes not registered (yet) are held once they join. A reservation for a project the
        scheduler does not know as an owner yet rebuilds it.
        """
        self.reservations[res.id] = res
        sched = self.sched
        known = sched is not None and not self._dirty
        if known and sched is not None and res.owner:
            known = sched.quotas is not None and res.owner in {
                q.project for q in sched.quotas.quotas
            }
        if not known:
            self._dirty = True
            return
        self._apply_reservation(res)

    def remove_reservation(self, res_id: int) -> bool:
        """Drop a reservation (rebuilds the scheduler); False when there was none.

        The nodes of a drain window that had begun come back with the next
        :meth:`due_drains`.
        """
        res = self.reservations.pop(res_id, None)
        if res is None:
            return False
        if res_id in self._drains_begun:
            self._undrain += [n for n in res.nodes if n not in self._undrain]
        self._drains_begun.discard(res_id)
        self._dirty = True
        return True

    def set_reservations(self, items: Iterable[LiveReservation], now: int | None = None) -> None:
        """Replace every reservation (recovery after a restart).

        With ``now``, drain windows that ended by then count as begun: the next
        :meth:`due_drains` brings their nodes back (the server may have been away at their
        end). Windows going on at ``now`` drain (again) at the next :meth:`due_drains`.
        """
        self.reservations = {r.id: r for r in items}
        self._drains_begun = (
            set()
            if now is None
            else {r.id for r in self.reservations.values() if r.drain and r.end <= now}
        )
        self._dirty = True

    def _apply_reservation(self, res: LiveReservation) -> None:
        assert self.sched is not None
        nodes = [self._node_index[n] for n in res.nodes if self._built_index(n) is not None]
        if nodes and res.end > self._now:
            self.sched.add_reservation(res.start, res.end, nodes, res.owner)

    def pick_nodes(
        self,
        start: int,
        end: int,
        *,
        count: int = 0,
        cpu_milli: int = 0,
        memory_mib: int = 0,
        gpus: int = 0,
        gpu_model: str = "",
    ) -> tuple[str, ...]:
        """Choose nodes for a reservation asked as capacity rather than by name.

        Candidates: registered nodes not down, of the GPU model asked for, not in another
        reservation overlapping ``[start, end)``. The largest go first (GPUs, CPUs, memory,
        then name), until there are ``count`` nodes and the CPUs, memory and GPUs asked for.

        Raises
        ------
        InputError
            When the candidates cannot hold the request (field ``capacity``).
        """
        if not (count or cpu_milli or memory_mib or gpus):
            raise InputError("ask for nodes, cpu_milli, memory_mib or gpus", field="capacity")
        taken = {
            n
            for r in self.reservations.values()
            if r.start < end and start < r.end
            for n in r.nodes
        }
        cands = [
            n
            for n in self.nodes
            if n.state != "down"
            and n.name not in taken
            and (not gpu_model or _matching(GpuModels((n.gpu_model,)), gpu_model))
        ]
        cands.sort(key=lambda n: (-n.num_physical, -n.cpu_milli, -n.memory_mib, n.name))
        chosen: list[str] = []
        have = [0, 0, 0]
        for n in cands:
            if (
                len(chosen) >= count
                and have[0] >= cpu_milli
                and have[1] >= memory_mib
                and (have[2] >= gpus)
            ):
                break
            chosen.append(n.name)
            have = [have[0] + n.cpu_milli, have[1] + n.memory_mib, have[2] + n.num_physical]
        if len(chosen) < count or have[0] < cpu_milli or have[1] < memory_mib or have[2] < gpus:
            raise InputError(
                f"the free nodes hold {len(chosen)} nodes, {have[0]} milli-CPU, {have[1]} MiB "
                f"and {have[2]} GPUs over that window",
                field="capacity",
            )
        return tuple(chosen)

    def due_drains(self, now: int) -> list[tuple[str, str]]:
        """Node state changes the drain windows call for at ``now``: ``(node, state)``.

        A window's nodes go ``draining`` at its start (the reservation kept new work off them
        until then; what still runs is requeued by the drain) and ``up`` at its end. Each is
        returned once; the caller applies it as an operator's drain or uncordon.
        """
        out = [(n, "up") for n in self._undrain if n in self._node_index]
        self._undrain = []
        for res in sorted(self.reservations.values(), key=lambda r: (r.start, r.id)):
            if not res.drain:
                continue
            if res.start <= now < res.end and res.id not in self._drains_begun:
                self._drains_begun.add(res.id)
                out += [(n, "draining") for n in res.nodes if n in self._node_index]
            elif now >= res.end:
                if res.id in self._drains_begun:
                    out += [(n, "up") for n in res.nodes if n in self._node_index]
                del self.reservations[res.id]
                self._drains_begun.discard(res.id)
        return out

    # Jobs -----------------------------------------------------------------------------
    def add(self, job: LiveJob) -> None:
        """Queue a job (or park it with a reason when no node could ever take it)."""
        self.add_many([job])

    def add_many(self, jobs: Sequence[LiveJob]) -> None:
        """Queue several jobs with one native call (parking those no node could take)."""
        ready = []
        for job in jobs:
            self._jobs[job.job_id] = job
            why = self._unplaceable(job)
            if why:
                self._parked[job.job_id] = why
            else:
                self._order.append(job.job_id)
                ready.append(job)
        if ready and self.sched is not None:
            self._queue(ready)

    def _unplaceable(self, job: LiveJob) -> str:
        if self.sched is None:
            return "no nodes registered"
        missing = [m for m in job.gpu_models if not _matching(self.models, m)]
        if missing:
            return f"no node has GPU model {missing[0]}"
        return ""

    def _register(self, jobs: Sequence[LiveJob]) -> list[int]:
        """Add jobs to the native queue with their exclusivity and elasticity; indices."""
        assert self.sched is not None
        index = self.sched.add_jobs(_columns(jobs, self.models))
        for job, idx in zip(jobs, index.tolist(), strict=True):
            self._idx[job.job_id] = idx
            self._job_of[idx] = job.job_id
        excl = [i for job, i in zip(jobs, index.tolist(), strict=True) if job.exclusive]
        if excl:
            self.sched.set_exclusive(np.asarray(excl, dtype=np.int32))
        elastic = [(i, job.min_tasks) for job, i in zip(jobs, index.tolist(), strict=True)
                   if job.elastic]  # fmt: skip
        if elastic:
            self.sched.set_elastic(
                np.asarray([i for i, _ in elastic], dtype=np.int32),
                np.asarray([m for _, m in elastic], dtype=np.int32),
            )
        return [int(i) for i in index.tolist()]

    def _queue(self, jobs: Sequence[LiveJob]) -> None:
        assert self.sched is not None
        index = self._register(jobs)
        self.sched.submit(np.asarray(index, dtype=np.int32))

    def restore(self, job: LiveJob, start: int, placement: Placement) -> str:
        """Put a running job back on its nodes and GPUs; ``"ok"`` or why not."""
        return self.restore_many([(job, start, placement)])[0]

    def restore_many(self, items: Sequence[tuple[LiveJob, int, Placement]]) -> list[str]:
        """Put running jobs back on their nodes and GPUs (one native add for all).

        Returns ``"ok"`` or why not, per job; a job that cannot be restored is forgotten.
        """
        if items:
            self.flush(items[0][1] if self.sched is None else self._now)
        codes = ["node_missing"] * len(items)
        ok = []
        for i, (job, _, placement) in enumerate(items):
            self._jobs[job.job_id] = job
            self._order.append(job.job_id)
            known = all(name in self._node_index for name, _ in placement)
            if self.sched is None or self._unplaceable(job) or not known:
                self._forget(job.job_id)
            else:
                ok.append(i)
        if not ok or self.sched is None:
            return codes
        index = self._register([items[i][0] for i in ok])
        for i, idx in zip(ok, index, strict=True):
            job, start, placement = items[i]
            nodes = [self._node_index[name] for name, _ in placement]
            gpus = [g for _, gs in placement for g in gs]
            codes[i] = self.sched.restore(idx, start, nodes, gpus)
            if codes[i] != "ok":
                self._forget(job.job_id)
        return codes

    def _forget(self, job_id: int) -> None:
        self._jobs.pop(job_id, None)
        self._parked.pop(job_id, None)
        self._evicted.pop(job_id, None)
        idx = self._idx.pop(job_id, None)
        if idx is not None:
            self._job_of.pop(idx, None)
        if job_id in self._order:
            self._order.remove(job_id)

    def cancel(self, job_id: int) -> None:
        """Drop a pending job (or one still in its preemption grace)."""
        idx = self._idx.get(job_id)
        if idx is not None and self.sched is not None:
            state = self.sched.job_state(idx)
            if state == "pending":
                self.sched.cancel(idx)
            elif state == "running" and job_id in self._evicted:
                self.sched.finish(np.asarray([idx], dtype=np.int32), self._now)
        self._forget(job_id)
        self._hold_gpus()

    def finish(self, job_id: int, now: int) -> None:
        """Release a running job's resources; the job is gone."""
        idx = self._idx.get(job_id)
        if idx is not None and self.sched is not None and self.sched.job_state(idx) == "running":
            self.sched.finish(np.asarray([idx], dtype=np.int32), now)
        self._forget(job_id)
        self._hold_gpus()

    def requeue(self, job_id: int, now: int) -> None:
        """Stop a running job and queue it again (node failure, restart after a failure)."""
        idx = self._idx.get(job_id)
        if idx is not None and self.sched is not None and self.sched.job_state(idx) == "running":
            self.sched.requeue(idx, now)
        self._evicted.pop(job_id, None)
        self._hold_gpus()

    # Preemption with a grace period ------------------------------------------------------
    def grace_of(self, job_id: int) -> int:
        """Seconds an evicted job has left to checkpoint (0: stop it now, or not evicted)."""
        deadline = self._evicted.get(job_id)
        return 0 if deadline is None else max(0, deadline - self._now)

    def in_grace(self, job_id: int) -> bool:
        """Whether a job evicted by a preemption still holds its resources (its grace)."""
        return job_id in self._evicted

    def release_evicted(self, job_id: int, now: int) -> bool:
        """Requeue an evicted job now: its tasks are gone before its grace ended.

        Its resources are free for the next cycle. Returns whether the job was in its grace.
        """
        if job_id not in self._evicted:
            return False
        self.requeue(job_id, now)
        return True

    def _end_graces(self, now: int) -> None:
        assert self.sched is not None
        for job_id, deadline in list(self._evicted.items()):
            if deadline <= now:
                self.requeue(job_id, now)

    # The cycle ------------------------------------------------------------------------
    def cycle(self, now: int) -> list[int]:
        """Start what the policy allows; returns the started job ids."""
        self._now = now
        self.flush(now)
        self.moved = []
        if self.sched is None:
            return []
        self._end_graces(now)
        busy = len(self._jobs) + len(self._holders) + len(self._pads)
        if self.sched.num_jobs > busy + COMPACT_AFTER:
            self._rebuild(now)
        started = self.sched.cycle(now).tolist()
        self._preempted = []
        grace = self.queue.grace_period
        for i in self.sched.preempted().tolist():
            job_id = self._job_of.get(i)
            if job_id is None:
                continue
            self._preempted.append(job_id)
            if grace > 0 and self.sched.terminating(i):
                self._evicted[job_id] = now + grace
        fresh = set(started)
        self._resized = [
            self._job_of[i]
            for i in self.sched.resized().tolist()
            if i in self._job_of and i not in fresh
        ]
        if self.gang.active and started:
            self._improve_gangs(started, now)
        self._hold_gpus()
        return [self._job_of[i] for i in started if i in self._job_of]

    def _improve_gangs(self, started: list[int], now: int) -> None:
        assert self.sched is not None
        gangs = [
            i for i in started if i in self._job_of and not self._jobs[self._job_of[i]].exclusive
        ]
        requests, forbidden = [], []
        for i in gangs:
            job = self._jobs[self._job_of[i]]
            mask = sum(1 << m for name in set(job.gpu_models) for m in _matching(self.models, name))
            requests.append(GangRequest(job.num_tasks, job.cpu_milli, job.memory_mib, job.num_gpu,
                                        job.gpu_milli if job.num_gpu else 0, mask))  # fmt: skip
            end = now + max(job.requested, 1)
            forbidden.append(
                [
                    self._node_index[n]
                    for r in self.reservations.values()
                    if not (r.owner and r.owner == job.project) and now < r.end and end > r.start
                    for n in r.nodes
                    if self._built_index(n) is not None
                ]
            )
        moved = improve_started(
            self.sched,
            gangs,
            requests,
            now,
            self.gang,
            max_span=self.queue.max_span,
            forbidden=forbidden,
            seed=self.seed,
        )
        self.moved = [self._job_of[j] for j, _ in moved]

    def preempted(self) -> list[int]:
        """Jobs the last cycle evicted (queued again now, or after their grace period)."""
        return list(self._preempted)

    def resized(self) -> list[int]:
        """Return the running elastic jobs whose task count the last cycle changed."""
        return list(self._resized)

    def elastic_range(self, job_id: int) -> tuple[int, int] | None:
        """``(min_tasks, num_tasks)`` of an elastic job; None for other jobs."""
        job = self._jobs.get(job_id)
        return (job.min_tasks, job.num_tasks) if job is not None and job.elastic else None

    def placement(self, job_id: int) -> Placement:
        """Nodes and device slots of a running job, per task rank."""
        assert self.sched is not None
        nodes, gpus = self.sched.placement_of(self._idx[job_id])
        job = self._jobs[job_id]
        per = job.num_gpu if job.gpu_milli >= MILLI_GPU else (1 if job.num_gpu else 0)
        out: Placement = []
        for rank, n in enumerate(nodes.tolist()):
            local = [int(g) for g in gpus[rank * per : (rank + 1) * per].tolist()]
            out.append((self.nodes[n].name, local))
        return out

    def state(self, job_id: int) -> str:
        """``pending``, ``running``, ``parked`` or ``unknown``."""
        if job_id in self._parked:
            return "parked"
        idx = self._idx.get(job_id)
        if idx is None or self.sched is None:
            return "unknown"
        return self.sched.job_state(idx)

    def reason(self, job_id: int) -> str:
        """Why a waiting job has not started."""
        if job_id in self._parked:
            return self._parked[job_id]
        if job_id in self._evicted:
            return "preempted: checkpointing within its grace period"
        idx = self._idx.get(job_id)
        if idx is None or self.sched is None:
            return "queued"
        return self.sched.pending_reason(idx)

    def jobs_on(self, name: str) -> list[int]:
        """Return the running jobs with a task on node ``name``."""
        n = self._built_index(name)
        if self.sched is None or n is None:
            return []
        out = []
        for job_id, idx in self._idx.items():
            if self.sched.job_state(idx) == "running" and n in self.sched.placement_of(idx)[0]:
                out.append(job_id)
        return out

    # Fair share -----------------------------------------------------------------------
    def add_history(self, items: Iterable[PastUsage], now: int) -> None:
        """Count work that ran before this cluster existed into the queue sort's usage.

        For recovery after a restart: the finished jobs (and the running ones up to ``now``)
        the store holds, by project and user. Without a queue sort nothing is kept.
        """
        if self.queue_sort is None:
            return
        items = list(items)
        if self._sort is None:
            self._history += items
            self._now = max(self._now, now)
            return
        for item in items:
            self._sort.inner.add_history(item, now)

    def fairshare(self, now: int) -> dict[str, Any]:
        """Return the queue sort's view of the projects at ``now`` (``GET /v1/fairshare``)."""
        out: dict[str, Any] = {
            "policy": self.queue_sort[0] if self.queue_sort else None,
            "half_life": None,
            "projects": [],
        }
        pending: dict[str, int] = {}
        for job_id in self.queue_order(now):
            project = self._jobs[job_id].project
            pending[project] = pending.get(project, 0) + 1
        if self._sort is not None:
            inner = self._sort.inner
            out["half_life"] = (
                inner.half_life if self.queue_sort and self.queue_sort[0] != "drf" else None
            )
            for row in inner.report(now):
                cpu, mem, gpu = row.pop("running")
                row["project"] = row.pop("account")
                row["running"] = {"cpu_milli": cpu, "memory_mib": mem, "gpu_milli": gpu}
                row["pending"] = pending.pop(row["project"], 0)
                out["projects"].append(row)
        for project, count in sorted(pending.items()):
            out["projects"].append({"project": project, "pending": count})
        out["projects"].sort(key=lambda r: r["project"])
        return out

    def queue_order(self, now: int) -> list[int]:
        """Pending jobs in the order the next cycle considers them (best first).

        With a queue sort or the ``priority`` order: by priority (the plugin's), then
        submission; otherwise by submission (``sjf``: requested time first).
        """
        if self.sched is None:
            return []
        pending = [
            (idx, job_id)
            for job_id, idx in self._idx.items()
            if job_id not in self._evicted and self.sched.job_state(idx) == "pending"
        ]
        if not pending:
            return []
        index = np.asarray([i for i, _ in pending], dtype=np.int32)
        jobs = [self._jobs[j] for _, j in pending]
        if self._sort is not None:
            prio = self._sort.priorities(index, now).tolist()
        else:
            prio = [float(j.priority) for j in jobs]
        if self.queue.order in ("priority",) or self._sort is not None:
            keys = [(-p, j.submit, i) for p, j, i in zip(prio, jobs, index.tolist(), strict=True)]
        elif self.queue.order == "sjf":
            keys = [
                (float(j.requested), j.submit, i) for j, i in zip(jobs, index.tolist(), strict=True)
            ]
        else:
            keys = [(0.0, j.submit, i) for j, i in zip(jobs, index.tolist(), strict=True)]
        order = sorted(range(len(pending)), key=lambda k: keys[k])
        return [pending[k][1] for k in order]

    # Rebuild --------------------------------------------------------------------------
    def _rebuild(self, now: int) -> None:
        self._now = now
        self._dirty = False
        old, old_idx = self.sched, dict(self._idx)
        running: list[tuple[int, int, Placement]] = []
        if old is not None:
            for job_id in self._order:
                idx = old_idx.get(job_id)
                if idx is not None and old.job_state(idx) == "running":
                    running.append((job_id, old.start_time(idx), self.placement(job_id)))
        if self._sort is not None:
            self._usage = self._sort.inner.snapshot(now)
        self.sched = None
        self._sort = None
        self._built = 0
        self._idx.clear()
        self._job_of.clear()
        self._holders.clear()
        self._pads.clear()
        self._holder_milli.clear()
        if not self.nodes:
            return
        # A GPU without a model name is a model of its own ("" cannot be asked for by name).
        names = sorted({n.gpu_model for n in self.nodes if n.num_gpu})
        self.models = GpuModels(tuple(names))
        table = NodeTable(
            name=tuple(n.name for n in self.nodes),
            cpu_milli=np.asarray([n.cpu_milli for n in self.nodes], dtype=np.int64),
            memory_mib=np.asarray([n.memory_mib for n in self.nodes], dtype=np.int64),
            num_gpu=np.asarray([n.num_gpu for n in self.nodes], dtype=np.int32),
            gpu_model=np.asarray(
                [self.models.index(n.gpu_model) if n.num_gpu else -1 for n in self.nodes],
                dtype=np.int32,
            ),
            models=self.models,
            rack=np.asarray([n.rack for n in self.nodes], dtype=np.int32),
            spine=np.asarray([n.spine for n in self.nodes], dtype=np.int32),
        )
        self._built = len(self.nodes)
        if self.queue_sort is not None:
            inner = make_queue_sort(self.queue_sort[0], table, None, self.queue_sort[1])
            assert isinstance(inner, FairShare | DRF | MultifactorPriority)
            if self._usage is not None:
                inner.load(self._usage)
            for item in self._history:
                inner.add_history(item, max(now, self._now))
            self._history = []
            self._sort = _LiveSort(inner)
        self.sched = Scheduler(
            table,
            placement=self.profile,
            queue=self.queue,
            seed=self.seed,
            quotas=self._effective_quotas(),
            checkpoint=self.checkpoint,
            queue_sort=self._sort,
        )
        self._set_topology()
        self._pad_mig_slots()
        order, self._order = self._order, []
        parked, self._parked = self._parked, {}
        jobs = self._jobs
        self._jobs = {}
        evicted, self._evicted = self._evicted, {}
        is_running = {job_id for job_id, _, _ in running}
        self.lost = []
        codes = self.restore_many([(jobs[j], start, placement) for j, start, placement in running])
        self.lost = [j for (j, _, _), code in zip(running, codes, strict=True) if code != "ok"]
        # A job in its grace period keeps it: the engine sees it running, we stop it later.
        self._evicted = {j: t for j, t in evicted.items() if j in self._jobs}
        waiting = [jobs[j] for j in order if j not in is_running] + [jobs[j] for j in parked]
        waiting.sort(key=lambda j: (j.submit, j.job_id))
        self.add_many(waiting)
        for res in sorted(self.reservations.values(), key=lambda r: r.id):
            try:
                self._apply_reservation(res)
            except InputError as exc:  # a window that ended while we were away, say
                log.warning("reservation %d not applied: %s", res.id, exc.message)
        for i in range(len(self.nodes)):
            self._apply_node(i)

    def _set_topology(self) -> None:
        assert self.sched is not None
        if not any(node.nvlink or node.numa for node in self.nodes):
            return  # one island and one domain everywhere: the state's defaults
        nvlink: list[int] = []
        numa: list[int] = []
        for node in self.nodes:
            for dev in node.devices():
                nvlink.append(node.nvlink[dev.gpu] if dev.gpu < len(node.nvlink) else 0)
                numa.append(node.numa[dev.gpu] if dev.gpu < len(node.numa) else 0)
        if nvlink:
            _core.set_gpu_topology(
                self.sched.state,
                np.asarray(nvlink, dtype=np.int32),
                np.asarray(numa, dtype=np.int32),
            )

    def _pad_mig_slots(self) -> None:
        """Fill each MIG slot's device down to its instance's share, for good."""
        assert self.sched is not None
        for n, node in enumerate(self.nodes):
            for slot, dev in enumerate(node.slots):
                if dev.milli < MILLI_GPU:
                    idx = self._add_holder(MILLI_GPU - dev.milli)
                    code = self.sched.restore(idx, self._now, [n], [slot])
                    if code != "ok":  # pragma: no cover - the node was just built empty
                        raise RuntimeError(f"cannot pad MIG slot {slot} of {node.name}: {code}")
                    self._pads[(node.name, slot)] = idx

    # Views ----------------------------------------------------------------------------
    def allocated(self, name: str) -> tuple[int, int, int]:
        """CPU, memory and milli-GPU in use on a node (unhealthy GPUs excluded)."""
        n = self._built_index(name)
        if self.sched is None or n is None:
            return (0, 0, 0)
        st = self.sched.state
        begin = int(st.gpu_begin[n])
        free = st.gpu_free
        node = self.nodes[n]
        gpu_used = sum(
            max(0, dev.milli - int(free[begin + slot]))
            for slot, dev in enumerate(node.devices())
            if dev.gpu not in node.unhealthy
        )
        return (
            int(st.cpu_capacity[n] - st.cpu_free[n]),
            int(st.memory_capacity[n] - st.memory_free[n]),
            gpu_used,
        )

    def usage(self, project: str) -> tuple[int, int, int]:
        """Resources a project with a quota holds now (as the quota check counts them)."""
        return (0, 0, 0) if self.sched is None else self.sched.usage(project)

    def totals(self) -> tuple[int, int, int]:
        """CPU, memory and milli-GPU allocated over the cluster (placeholders excluded)."""
        if self.sched is None:
            return (0, 0, 0)
        st = self.sched.state
        _, held = self._held()
        return (
            int((np.asarray(st.cpu_capacity) - np.asarray(st.cpu_free)).sum()),
            int((np.asarray(st.memory_capacity) - np.asarray(st.memory_free)).sum()),
            int(st.allocated_gpu_milli) - held,
        )

    def fragmentation(self) -> float:
        """Milli-GPU free on whole GPUs that cannot take a whole GPU anymore (idle shares)."""
        if self.sched is None:
            return 0.0
        free = np.asarray(self.sched.state.gpu_free)
        whole = np.asarray([not d.mig for n in self.nodes for d in n.devices()], dtype=bool)
        if len(whole) != len(free):  # nodes joined since the build
            whole = np.ones(len(free), dtype=bool)
        part = (free > 0) & (free < MILLI_GPU) & whole
        return float(free[part].sum())

    @property
    def num_pending(self) -> int:
        """Jobs waiting (parked ones included)."""
        pending = 0 if self.sched is None else self.sched.num_pending
        return pending + len(self._parked)

    @property
    def num_running(self) -> int:
        """Jobs running (placeholders excluded)."""
        if self.sched is None:
            return 0
        held, _ = self._held()
        return self.sched.num_running - held


def _check_queue_sort(name: str, options: Mapping[str, Any]) -> None:
    """Validate a queue sort's name and options now, not at the first node's registration."""
    probe = NodeTable(
        name=("probe",),
        cpu_milli=np.asarray([1000], dtype=np.int64),
        memory_mib=np.asarray([1024], dtype=np.int64),
        num_gpu=np.asarray([1], dtype=np.int32),
        gpu_model=np.asarray([0], dtype=np.int32),
        models=GpuModels(("probe",)),
        rack=np.zeros(1, dtype=np.int32),
        spine=np.zeros(1, dtype=np.int32),
    )
    make_queue_sort(name, probe, None, options)


def _matching(models: GpuModels, wanted: str) -> list[int]:
    """Ids of the node models a job's model name selects.

    NVML names models precisely (``A100-SXM4-80GB``); users ask for families (``A100``). A
    name selects the models it equals or that continue it after a dash, ignoring case.
    """
    w = wanted.lower()
    return [
        i
        for i, name in enumerate(models.names)
        if name and (name.lower() == w or name.lower().startswith(w + "-"))
    ]


def _columns(jobs: Sequence[LiveJob], models: GpuModels) -> JobColumns:
    n = len(jobs)
    masks = [sum(1 << i for m in set(j.gpu_models) for i in _matching(models, m)) for j in jobs]
    return JobColumns(
        job_id=np.asarray([j.job_id for j in jobs], dtype=np.int64),
        submit=np.asarray([j.submit for j in jobs], dtype=np.int64),
        duration=np.asarray([j.requested for j in jobs], dtype=np.int64),
        requested=np.asarray([max(j.requested, 1) for j in jobs], dtype=np.int64),
        estimated=np.zeros(n, dtype=bool),
        num_tasks=np.asarray([j.num_tasks for j in jobs], dtype=np.int32),
        cpu_milli=np.asarray([j.cpu_milli for j in jobs], dtype=np.int64),
        memory_mib=np.asarray([j.memory_mib for j in jobs], dtype=np.int64),
        num_gpu=np.asarray([j.num_gpu for j in jobs], dtype=np.int32),
        gpu_milli=np.asarray([j.gpu_milli if j.num_gpu else 0 for j in jobs], dtype=np.int32),
        models=np.asarray(masks, dtype=np.uint64),
        priority=np.asarray([j.priority for j in jobs], dtype=np.int32),
        user=tuple(j.user for j in jobs),
        group=tuple(j.project for j in jobs),
    )
