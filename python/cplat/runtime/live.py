"""The live cluster: nodes that join, leave and fail around the one ``Scheduler``.

The native cluster state has a fixed set of nodes, so a node joining (or changing shape) or a
quota change rebuilds the scheduler: running jobs are put back exactly where their processes
run (``Scheduler.restore``), pending jobs are queued again in their submission order. Node
states map onto the engine's node flags; an unhealthy GPU is held by a placeholder job so
that nothing new lands on it. Rebuilds also drop the finished jobs the native queue keeps.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from cplat.model import MILLI_GPU, GpuModels, NodeTable
from cplat.profile import Profile
from cplat.scheduler import Checkpointing, JobColumns, QueuePolicy, Quotas, Scheduler

#: Node states and the engine flags they set.
NODE_FLAGS = {"up": 0, "down": 1, "cordoned": 2, "draining": 2 | 4}
#: Rebuild to drop finished jobs once the native queue holds this many more than it needs.
COMPACT_AFTER = 100_000
HOLDER_PRIORITY = 2**30


@dataclass
class LiveNode:
    """A node as the scheduler sees it."""

    name: str
    cpu_milli: int
    memory_mib: int
    num_gpu: int = 0
    gpu_model: str = ""
    rack: int = 0
    spine: int = 0
    state: str = "up"
    unhealthy: set[int] = field(default_factory=set)

    def shape(self) -> tuple[int, int, int, str, int, int]:
        """Return what the native state is built from (a change needs a rebuild)."""
        return (
            self.cpu_milli,
            self.memory_mib,
            self.num_gpu,
            self.gpu_model,
            self.rack,
            self.spine,
        )


@dataclass(frozen=True)
class LiveJob:
    """What the scheduler needs of a job: identical tasks, placed all or nothing."""

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


Placement = list[tuple[str, list[int]]]


class LiveCluster:
    """Nodes, quotas and jobs of the running service around one :class:`Scheduler`.

    Parameters
    ----------
    placement, queue, checkpoint
        The scheduler's policies (as in the simulator).
    seed
        Tie-breaking seed.
    """

    def __init__(
        self,
        placement: Profile,
        queue: QueuePolicy,
        checkpoint: Checkpointing | None = None,
        seed: int = 0,
    ) -> None:
        self.profile = placement
        self.queue = queue
        self.checkpoint = checkpoint
        self.seed = seed
        self.nodes: list[LiveNode] = []
        self._node_index: dict[str, int] = {}
        self.quotas: Quotas | None = None
        self._jobs: dict[int, LiveJob] = {}
        self._parked: dict[int, str] = {}  # job -> why it cannot be queued at all
        self._order: list[int] = []  # submission order of jobs not parked
        self._idx: dict[int, int] = {}  # job id -> scheduler index
        self._job_of: dict[int, int] = {}  # scheduler index -> job id
        self._holders: dict[tuple[str, int], int] = {}  # unhealthy GPU -> placeholder index
        self._preempted: list[int] = []
        self.lost: list[int] = []  # running jobs a rebuild could not put back
        self.sched: Scheduler | None = None
        self.models = GpuModels(())
        self._now = 0
        # Rebuilds are deferred to the next cycle (or restore), so that a burst of nodes
        # registering costs one rebuild, not one each. `_built` nodes are in `sched`.
        self._dirty = False
        self._built = 0

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
        """Rebuild now if nodes or quotas changed since the last build."""
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
        """Set which GPUs of a node are unhealthy (nothing new is placed on them)."""
        i = self._node_index[name]
        self.nodes[i].unhealthy = {g for g in gpus if 0 <= g < self.nodes[i].num_gpu}
        self._apply_node(i)

    def _apply_node(self, i: int) -> None:
        if self.sched is None or i >= self._built:
            return  # the next rebuild applies it
        node = self.nodes[i]
        flags = int(self.sched.state.flags[i]) & ~0b111
        self.sched.state.set_flags(i, flags | NODE_FLAGS[node.state])
        for (name, gpu), idx in list(self._holders.items()):
            if name == node.name and gpu not in node.unhealthy:
                if self.sched.job_state(idx) == "running":
                    self.sched.finish(np.asarray([idx], dtype=np.int32), self._now)
                del self._holders[(name, gpu)]
        for gpu in sorted(node.unhealthy):
            if (node.name, gpu) not in self._holders:
                self._holders[(node.name, gpu)] = self._add_holder()
        self._hold_gpus()

    def _add_holder(self) -> int:
        assert self.sched is not None
        # Top priority and no project: a placeholder is never a preemption victim.
        hold = LiveJob(-1, "", self._now, 1, 1, 0, 0, 1, MILLI_GPU, priority=HOLDER_PRIORITY)
        cols = _columns([hold], self.models)
        return int(self.sched.add_jobs(cols)[0])

    def _hold_gpus(self) -> None:
        """Put placeholders on unhealthy GPUs as soon as their users are gone."""
        if self.sched is None:
            return
        for (name, gpu), idx in self._holders.items():
            if self.sched.job_state(idx) != "running":
                self.sched.restore(idx, self._now, [self._node_index[name]], [gpu])

    # Quotas ---------------------------------------------------------------------------
    def set_quotas(self, quotas: Quotas | None, now: int) -> None:
        """Replace the quotas (rebuilds the scheduler)."""
        self.quotas = quotas
        self._now = now
        self._dirty = True

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

    def _queue(self, jobs: Sequence[LiveJob]) -> None:
        assert self.sched is not None
        index = self.sched.add_jobs(_columns(jobs, self.models))
        for job, idx in zip(jobs, index.tolist(), strict=True):
            self._idx[job.job_id] = idx
            self._job_of[idx] = job.job_id
        self.sched.submit(index)

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
        index = self.sched.add_jobs(_columns([items[i][0] for i in ok], self.models)).tolist()
        for i, idx in zip(ok, index, strict=True):
            job, start, placement = items[i]
            self._idx[job.job_id] = idx
            self._job_of[idx] = job.job_id
            nodes = [self._node_index[name] for name, _ in placement]
            gpus = [g for _, gs in placement for g in gs]
            codes[i] = self.sched.restore(idx, start, nodes, gpus)
            if codes[i] != "ok":
                self._forget(job.job_id)
        return codes

    def _forget(self, job_id: int) -> None:
        self._jobs.pop(job_id, None)
        self._parked.pop(job_id, None)
        idx = self._idx.pop(job_id, None)
        if idx is not None:
            self._job_of.pop(idx, None)
        if job_id in self._order:
            self._order.remove(job_id)

    def cancel(self, job_id: int) -> None:
        """Drop a pending job."""
        idx = self._idx.get(job_id)
        if idx is not None and self.sched is not None and self.sched.job_state(idx) == "pending":
            self.sched.cancel(idx)
        self._forget(job_id)

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
        self._hold_gpus()

    def cycle(self, now: int) -> list[int]:
        """Start what the policy allows; returns the started job ids."""
        self._now = now
        self.flush(now)
        if self.sched is None:
            return []
        if self.sched.num_jobs > len(self._jobs) + len(self._holders) + COMPACT_AFTER:
            self._rebuild(now)
        started = self.sched.cycle(now).tolist()
        self._preempted = [
            self._job_of[i] for i in self.sched.preempted().tolist() if i in self._job_of
        ]
        self._hold_gpus()
        return [self._job_of[i] for i in started if i in self._job_of]

    def preempted(self) -> list[int]:
        """Jobs the last cycle evicted (already queued again)."""
        return list(self._preempted)

    def placement(self, job_id: int) -> Placement:
        """Nodes and local GPU indices of a running job, per task rank."""
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
        self.sched = None
        self._built = 0
        self._idx.clear()
        self._job_of.clear()
        self._holders.clear()
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
        self.sched = Scheduler(
            table,
            placement=self.profile,
            queue=self.queue,
            seed=self.seed,
            quotas=self.quotas,
            checkpoint=self.checkpoint,
        )
        order, self._order = self._order, []
        parked, self._parked = self._parked, {}
        jobs = self._jobs
        self._jobs = {}
        is_running = {job_id for job_id, _, _ in running}
        self.lost = []
        codes = self.restore_many([(jobs[j], start, placement) for j, start, placement in running])
        self.lost = [j for (j, _, _), code in zip(running, codes, strict=True) if code != "ok"]
        waiting = [jobs[j] for j in order if j not in is_running] + [jobs[j] for j in parked]
        waiting.sort(key=lambda j: (j.submit, j.job_id))
        self.add_many(waiting)
        for i in range(len(self.nodes)):
            self._apply_node(i)

    # Views ----------------------------------------------------------------------------
    def allocated(self, name: str) -> tuple[int, int, int]:
        """CPU, memory and milli-GPU in use on a node (unhealthy GPUs excluded)."""
        n = self._built_index(name)
        if self.sched is None or n is None:
            return (0, 0, 0)
        st = self.sched.state
        begin, end = int(st.gpu_begin[n]), int(st.gpu_begin[n + 1])
        node = self.nodes[n]
        gpu_used = sum(
            MILLI_GPU - int(st.gpu_free[g])
            for g in range(begin, end)
            if g - begin not in node.unhealthy
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
        held = sum(1 for i in self._holders.values() if self.sched.job_state(i) == "running")
        return (
            int((np.asarray(st.cpu_capacity) - np.asarray(st.cpu_free)).sum()),
            int((np.asarray(st.memory_capacity) - np.asarray(st.memory_free)).sum()),
            int(st.allocated_gpu_milli) - held * MILLI_GPU,
        )

    def fragmentation(self) -> float:
        """Milli-GPU free on nodes that cannot take a whole GPU anymore (idle shares)."""
        if self.sched is None:
            return 0.0
        st = self.sched.state
        free = np.asarray(st.gpu_free)
        return float(free[(free > 0) & (free < MILLI_GPU)].sum())

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
        held = sum(1 for i in self._holders.values() if self.sched.job_state(i) == "running")
        return self.sched.num_running - held


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
        user=tuple("" for _ in jobs),
        group=tuple(j.project for j in jobs),
    )
