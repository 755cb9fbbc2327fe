"""The one scheduling core, used by the simulator (virtual time) and the service (wall time).

``Scheduler`` decides *when* (queue order, backfilling, reservations) through the native
``QueueScheduler`` and *where* (filter, score, select per task, gangs all or nothing) through
the native ``Engine``. It never reads a clock: every call that depends on time takes ``now``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from cplat import _core
from cplat.cluster import new_engine, new_state
from cplat.errors import InputError
from cplat.fragmentation import TargetWorkload
from cplat.model import GpuModels, NodeTable
from cplat.profile import POLICIES, Profile

I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

#: Slurm's backfill defaults (slurm.conf ``SchedulerParameters``) as :class:`QueuePolicy`
#: settings: ``bf_max_job_test=500`` -> ``max_backfill_jobs``, ``bf_window=1440`` (minutes)
#: -> ``calendar_horizon``, ``bf_resolution=60`` -> ``calendar_resolution``,
#: ``bf_interval=30`` -> ``backfill_interval``. ``QueuePolicy``'s own defaults are unbounded
#: (exact); ``QueuePolicy("fcfs", "conservative", **SLURM_BACKFILL)`` plans as Slurm does.
SLURM_BACKFILL: dict[str, int] = {
    "max_backfill_jobs": 500,
    "calendar_horizon": 86_400,
    "calendar_resolution": 60,
    "backfill_interval": 30,
}


@dataclass(frozen=True)
class QueuePolicy:
    """When jobs start.

    Parameters
    ----------
    order
        Queue order: ``fcfs``, ``sjf`` (shortest requested time), ``priority``, ``wfp3``,
        ``unicep`` or ``f1`` (the RLScheduler paper's heuristics).
    backfill
        ``none``, ``easy`` (the head job gets a reservation; others may start if they do not
        delay it), ``conservative`` (every queued job gets a reservation) or ``rlsched`` (the
        RLScheduler evaluation's simplified EASY: candidates must end before the head's
        reservation; no spare-capacity rule).
    lock_head
        A blocked head job keeps its place until it starts, even if a better job arrives.
    rlsched_wait
        Use the RLScheduler evaluation code's wait (``-1 - submit``) in WFP3/UNICEP keys
        instead of the real wait; only for reproducing its published tables.
    calendar_resolution, calendar_horizon
        Backfill calendar resolution and look-ahead (seconds; horizon 0 = unbounded).
    max_backfill_jobs
        Jobs tested for backfilling per cycle (0 = all).
    backfill_interval
        Seconds between backfill passes (0 = every cycle); the cycles in between start only
        what the queue order allows (Slurm's ``bf_interval``). See :data:`SLURM_BACKFILL`.
    preemption
        ``none``, ``priority`` (a higher-priority head may evict lower-priority jobs),
        ``reclaim`` (a project within its guaranteed quota may evict other projects' borrowed
        jobs) or ``both``. Victims are chosen to lose the least work since their last
        checkpoint; a job is always evicted whole and goes back to the queue.
    random_victims
        Pick victims in random order instead (a baseline for comparison).
    topology_aware
        Place multi-task jobs in as few spines, then racks, as possible.
    max_span
        Hard limit for multi-task jobs: ``none``, ``rack`` or ``spine`` (implies
        topology-aware placement).
    grace_period
        Seconds an evicted job keeps its resources to write a checkpoint before it stops.
    """

    order: str = "fcfs"
    backfill: str = "none"
    lock_head: bool = False
    rlsched_wait: bool = False
    calendar_resolution: int = 1
    calendar_horizon: int = 0
    max_backfill_jobs: int = 0
    backfill_interval: int = 0
    preemption: str = "none"
    random_victims: bool = False
    topology_aware: bool = False
    max_span: str = "none"
    grace_period: int = 0

    def __post_init__(self) -> None:
        orders, modes = _core.queue_order_names(), _core.backfill_names()
        preemptions = _core.preemption_names()
        spans = _core.span_limit_names()
        if self.max_span not in spans:
            raise InputError(
                f"unknown span limit {self.max_span!r} (valid: {', '.join(spans)})",
                field="max_span",
            )
        if self.preemption not in preemptions:
            raise InputError(
                f"unknown preemption {self.preemption!r} (valid: {', '.join(preemptions)})",
                field="preemption",
            )
        if self.order not in orders:
            raise InputError(
                f"unknown queue order {self.order!r} (valid: {', '.join(orders)})", field="order"
            )
        if self.backfill not in modes:
            raise InputError(
                f"unknown backfill {self.backfill!r} (valid: {', '.join(modes)})", field="backfill"
            )

    @property
    def name(self) -> str:
        """Short label, e.g. ``fcfs+easy``."""
        return self.order if self.backfill == "none" else f"{self.order}+{self.backfill}"


def nodes_from_table(table: pa.Table) -> NodeTable:
    """Build a :class:`~cplat.model.NodeTable` from a table in the canonical node schema."""
    models = GpuModels(tuple(sorted({m for m in table.column("gpu_model").to_pylist() if m})))
    model_col = table.column("gpu_model").to_pylist()
    return NodeTable(
        name=tuple(table.column("name").to_pylist()),
        cpu_milli=np.asarray(table.column("cpu_milli"), dtype=np.int64),
        memory_mib=np.asarray(table.column("memory_mib"), dtype=np.int64),
        num_gpu=np.asarray(table.column("num_gpu"), dtype=np.int32),
        gpu_model=np.asarray([models.index(m) if m else -1 for m in model_col], dtype=np.int32),
        models=models,
        rack=np.asarray(table.column("rack"), dtype=np.int32),
        spine=np.asarray(table.column("spine"), dtype=np.int32),
    )


@dataclass(frozen=True)
class JobColumns:
    """A job table's columns in the engine's types (``requested`` filled where unknown)."""

    job_id: I64
    submit: I64
    duration: I64
    requested: I64
    estimated: npt.NDArray[np.bool_]  # True where requested_time was unknown and filled
    num_tasks: I32
    cpu_milli: I64
    memory_mib: I64
    num_gpu: I32
    gpu_milli: I32
    models: npt.NDArray[np.uint64]
    priority: I32
    user: tuple[str, ...]
    group: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.job_id)


def job_columns(jobs: pa.Table, models: GpuModels) -> JobColumns:
    """Convert a canonical job table; unknown requested times become the actual duration.

    Raises
    ------
    InputError
        When a job names a GPU model the cluster does not have.
    """
    req = jobs.column("requested_time")
    duration = np.asarray(jobs.column("duration"), dtype=np.int64)
    unknown = np.asarray(req.is_null(), dtype=bool)
    requested = np.where(unknown, duration, np.asarray(req.fill_null(0), dtype=np.int64))
    masks = []
    cache: dict[str, int] = {}
    for i, spec in enumerate(jobs.column("gpu_models").to_pylist()):
        if spec not in cache:
            try:
                cache[spec] = models.mask(spec)
            except ValueError:
                raise InputError(
                    f"job {i} asks for GPU models {spec!r}; the cluster has: "
                    f"{', '.join(models.names) or 'none'}",
                    field="gpu_models",
                ) from None
        masks.append(cache[spec])
    return JobColumns(
        job_id=np.asarray(jobs.column("job_id"), dtype=np.int64),
        submit=np.asarray(jobs.column("submit_time"), dtype=np.int64),
        duration=duration,
        requested=np.maximum(requested, 1).astype(np.int64),
        estimated=unknown,
        num_tasks=np.asarray(jobs.column("num_tasks"), dtype=np.int32),
        cpu_milli=np.asarray(jobs.column("cpu_milli"), dtype=np.int64),
        memory_mib=np.asarray(jobs.column("memory_mib"), dtype=np.int64),
        num_gpu=np.asarray(jobs.column("num_gpu"), dtype=np.int32),
        gpu_milli=np.asarray(jobs.column("gpu_milli"), dtype=np.int32),
        models=np.asarray(masks, dtype=np.uint64),
        priority=np.asarray(jobs.column("priority"), dtype=np.int32),
        user=tuple(jobs.column("user").to_pylist()),
        group=tuple(jobs.column("group").to_pylist()),
    )


@dataclass(frozen=True)
class Checkpointing:
    """Jobs write a checkpoint after every ``interval`` seconds of work, taking ``cost`` seconds.

    A stopped job (preempted, or on a failed node) resumes from its last checkpoint; it loses
    the work done since. ``interval`` 0 means jobs never checkpoint (they restart from zero).
    """

    interval: int
    cost: int = 0

    def __post_init__(self) -> None:
        if self.interval < 0 or self.cost < 0:
            raise InputError(
                "checkpoint interval and cost must be non-negative", field="checkpoint"
            )

    def wall_time(self, work: int) -> int:
        """Wall time to do ``work`` seconds of work, checkpoints included (none at the end)."""
        if self.interval <= 0 or work <= 0:
            return max(work, 0)
        return work + self.cost * ((work - 1) // self.interval)

    def saved_work(self, elapsed: int, work_left: int) -> int:
        """Work secured by checkpoints after running ``elapsed`` seconds of a segment."""
        if self.interval <= 0:
            return 0
        return min(work_left, (elapsed // (self.interval + self.cost)) * self.interval)


@dataclass(frozen=True)
class Quota:
    """A project's quota (Kueue's vocabulary), per resource: milli-CPU, MiB, milli-GPU.

    ``nominal`` is guaranteed; the project may use up to ``nominal + borrowing_limit`` by
    borrowing unused quota of its ``cohort``; at most ``lending_limit`` of its own unused
    nominal quota is lent. Missing limits: borrowing 0, lending everything. ``overcommit``
    (>= 1) scales the nominal quota: a pool may promise more than it owns, expecting jobs to
    use less than they ask.
    """

    project: str
    nominal: tuple[int, int, int]
    borrowing_limit: tuple[int, int, int] = (0, 0, 0)
    lending_limit: tuple[int, int, int] | None = None
    cohort: str = ""
    overcommit: float = 1.0


_INT64_MAX = 2**63 - 1


def _amounts(vec: Sequence[int]) -> bool:
    """Whether ``vec`` holds three integers in ``[0, 2**63 - 1]`` (the native quota columns)."""
    return len(vec) == 3 and all(0 <= v <= _INT64_MAX for v in vec)


def _overcommitted(value: int, overcommit: float) -> int:
    """``value`` scaled by ``overcommit``, exact when it is 1, at most ``2**63 - 1``."""
    if overcommit == 1.0:
        return value
    return min(round(value * overcommit), _INT64_MAX)


class Quotas:
    """Quotas of several projects; a job's project is its ``group``.

    Cohort names are paths (``"org/research"``): cohorts form a tree, projects borrow from any
    project under the same root cohort, and ``cohort_limits`` may cap how much a cohort's
    whole subtree uses beyond the sum of its projects' nominal quotas.
    """

    def __init__(
        self,
        quotas: list[Quota],
        cohort_limits: dict[str, tuple[int, int, int]] | None = None,
    ) -> None:
        names = [q.project for q in quotas]
        if len(set(names)) != len(names):
            raise InputError("a project has two quotas", field="quotas")
        for q in quotas:
            if not 1.0 <= q.overcommit < math.inf:
                raise InputError(
                    f"project {q.project!r}: overcommit must be >= 1 and finite",
                    field="overcommit",
                )
            vectors = [("nominal", q.nominal), ("borrowing_limit", q.borrowing_limit)]
            if q.lending_limit is not None:
                vectors.append(("lending_limit", q.lending_limit))
            for label, vec in vectors:
                if not _amounts(vec):
                    raise InputError(
                        f"project {q.project!r}: {label} needs 3 non-negative values"
                        f" (at most {_INT64_MAX})",
                        field=label,
                    )
        self.quotas = list(quotas)
        self._index = {q.project: i for i, q in enumerate(quotas)}
        limits = dict(cohort_limits or {})
        for name, vec in limits.items():
            if not _amounts(vec):
                raise InputError(
                    f"cohort {name!r}: borrowing limit needs 3 non-negative values",
                    field="cohort_limits",
                )
        cohorts: set[str] = set()
        for path in [q.cohort for q in quotas if q.cohort] + list(limits):
            parts = [p for p in path.split("/") if p]
            if not parts:
                raise InputError(f"empty cohort name {path!r}", field="cohort")
            cohorts.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        self._cohort = {c: i for i, c in enumerate(sorted(cohorts))}
        self._limits = {"/".join(p for p in k.split("/") if p): v for k, v in limits.items()}

    def arrays(self) -> tuple[I32, I64, I64, I64]:
        """Columns for the native queue: cohort ids and (project x 3) limits."""
        cohort = np.asarray(
            [
                self._cohort.get("/".join(p for p in q.cohort.split("/") if p), -1)
                for q in self.quotas
            ],
            dtype=np.int32,
        )
        nominal = np.asarray(
            [[_overcommitted(v, q.overcommit) for v in q.nominal] for q in self.quotas],
            dtype=np.int64,
        ).reshape(-1)
        borrowing = np.asarray([q.borrowing_limit for q in self.quotas], dtype=np.int64).reshape(-1)
        lending = np.asarray(
            [q.lending_limit if q.lending_limit is not None else q.nominal for q in self.quotas],
            dtype=np.int64,
        ).reshape(-1)
        return cohort, nominal, borrowing, lending

    def cohort_arrays(self) -> tuple[I32, I64]:
        """Parent of each cohort (-1 for roots) and (cohort x 3) subtree caps (-1 = none)."""
        parent = np.full(len(self._cohort), -1, dtype=np.int32)
        caps = np.full((len(self._cohort), 3), -1, dtype=np.int64)
        for name, i in self._cohort.items():
            if "/" in name:
                parent[i] = self._cohort[name.rsplit("/", 1)[0]]
            if name in self._limits:
                caps[i] = self._limits[name]
        return parent, caps.reshape(-1)

    def projects_of(self, groups: tuple[str, ...]) -> I32:
        """Project id of each job's group (-1 where the group has no quota)."""
        return np.asarray([self._index.get(g, -1) for g in groups], dtype=np.int32)


class QueueSort(Protocol):
    """A queue-sort plugin: sets job priorities before every cycle (higher starts first).

    Fair share, DRF and multifactor priority are queue-sort plugins. The scheduler tells the
    plugin which jobs exist and when they start and finish; the plugin answers priorities for
    the pending ones. Used with the ``priority`` queue order.
    """

    def add_jobs(self, jobs: JobColumns, index: I32) -> None:
        """Learn about newly registered jobs (``index`` are their scheduler indices)."""

    def on_start(self, jobs: I32, now: int) -> None:
        """Jobs started at ``now``."""

    def on_finish(self, jobs: I32, now: int) -> None:
        """Jobs finished (or were stopped) at ``now``."""

    def priorities(self, pending: I32, now: int) -> F64:
        """Return priorities of the pending jobs at ``now``."""
        ...


class Scheduler:
    """Submit jobs, run scheduling cycles at given times, finish or requeue jobs.

    Every method checks its arguments in the native core and raises instead of misbehaving:
    ``IndexError`` for a job, node or project index outside its table (queries and setters),
    ``ValueError`` for a bad value (a NaN priority, a time outside +-2**56 seconds, a count
    below one, arrays of different lengths) and ``TypeError`` for arguments of the wrong type
    (floats as indices, integers that do not fit 64 bits). The job operations that answer a
    result (:meth:`submit`, :meth:`finish`, :meth:`requeue`, :meth:`cancel`, :meth:`restore`)
    treat an unknown job like a job in the wrong state: not accepted. A refused call changes
    nothing.

    Parameters
    ----------
    nodes
        The cluster.
    placement
        Where tasks go (filter/score/select profile); default best fit.
    queue
        When jobs start (order and backfilling).
    seed
        Seed of the engine's tie-breaking.
    workload
        Target workload for fragmentation-aware placement (needed by FGD profiles).
    queue_sort
        Optional queue-sort plugin setting priorities before each cycle (requires the
        ``priority`` queue order).
    quotas
        Per-project quotas (a job's project is its ``group``); jobs of groups without a quota
        are not limited.
    checkpoint
        How jobs checkpoint (sets how much work preemption or a failure loses).
    """

    def __init__(
        self,
        nodes: NodeTable,
        placement: Profile | None = None,
        queue: QueuePolicy | None = None,
        seed: int = 0,
        workload: TargetWorkload | None = None,
        queue_sort: QueueSort | None = None,
        quotas: Quotas | None = None,
        checkpoint: Checkpointing | None = None,
    ) -> None:
        self.nodes = nodes
        self.queue_sort = queue_sort
        self.placement = placement or POLICIES["bestfit"]
        self.queue = queue or QueuePolicy()
        self.state = new_state(nodes)
        self.engine = new_engine(self.state, self.placement, seed, workload)
        q = self.queue
        if queue_sort is not None and q.order != "priority":
            raise InputError("a queue-sort plugin needs the 'priority' queue order", field="order")
        self._q = _core.QueueScheduler(
            self.engine,
            order=q.order,
            backfill=q.backfill,
            lock_head=q.lock_head,
            rlsched_wait=q.rlsched_wait,
            calendar_resolution=q.calendar_resolution,
            calendar_horizon=q.calendar_horizon,
            max_backfill_jobs=q.max_backfill_jobs,
            preemption=q.preemption,
            random_victims=q.random_victims,
            seed=seed,
            topology_aware=q.topology_aware,
            max_span=q.max_span,
            grace_period=q.grace_period,
            backfill_interval=q.backfill_interval,
        )
        self.quotas = quotas
        if quotas is not None:
            cohort, nominal, borrowing, lending = quotas.arrays()
            parent, caps = quotas.cohort_arrays()
            self._q.set_quotas(cohort, nominal, borrowing, lending, parent, caps)
        self.checkpoint = checkpoint

    def add_jobs(self, jobs: JobColumns) -> I32:
        """Register jobs (not yet submitted); returns their scheduler indices.

        All or none: a submit time outside +-2**56 seconds or a NaN priority raises
        ``ValueError`` and registers nothing. Requests and task counts are checked by
        :meth:`submit`, which does not accept a job whose shape is invalid.
        """
        first = self._q.add_jobs(
            jobs.submit,
            jobs.requested,
            jobs.num_tasks,
            jobs.cpu_milli,
            jobs.memory_mib,
            jobs.num_gpu,
            jobs.gpu_milli,
            jobs.models,
            jobs.priority.astype(np.float64),
        )
        index = np.arange(first, first + len(jobs), dtype=np.int32)
        if self.quotas is not None or self.checkpoint is not None:
            project = (
                self.quotas.projects_of(jobs.group)
                if self.quotas is not None
                else np.full(len(jobs), -1, dtype=np.int32)
            )
            ck = self.checkpoint or Checkpointing(0, 0)
            self._q.set_job_meta(
                index,
                project,
                np.full(len(jobs), ck.interval, dtype=np.int64),
                np.full(len(jobs), ck.cost, dtype=np.int64),
            )
        if self.queue_sort is not None:
            self.queue_sort.add_jobs(jobs, index)
        return index

    def native_replay(
        self, wall: I64, wakeups: I64, horizon: int | None, track_gpu: bool
    ) -> _core.Replay:
        """Return the native event loop over this scheduler's jobs (none submitted yet).

        ``wall`` is each job's run time, ``wakeups`` extra instants to schedule at. The loop
        is :mod:`cplat.sim`'s for runs without failures, preemption, elastic jobs, queue-sort
        plugins, ticks or a decision log (see :func:`cplat.sim.run.simulate`).
        """
        if self.queue_sort is not None:
            raise InputError("the native replay runs without a queue-sort plugin")
        return _core.Replay(
            self._q, self.engine, wall, wakeups, -1 if horizon is None else horizon, track_gpu
        )

    def submit(self, jobs: I32 | I64) -> int:
        """Make registered jobs pending; returns how many were accepted.

        Unknown jobs, jobs already submitted and jobs whose request is invalid (negative or
        oversized amounts, a task count outside ``[1, 2**20]``) are not accepted.
        """
        return int(self._q.submit_many(jobs))

    def cycle(self, now: int) -> I32:
        """Start what the policy allows at time ``now``; returns the started jobs in order.

        Raises
        ------
        ValueError
            When ``now`` is outside +-2**56 seconds.
        """
        if self.queue_sort is not None:
            pending = np.asarray(self._q.pending_jobs(), dtype=np.int32)
            if len(pending):
                self._q.set_priorities(pending, self.queue_sort.priorities(pending, now))
        started = np.asarray(self._q.cycle(now), dtype=np.int32)
        if self.queue_sort is not None and len(started):
            self.queue_sort.on_start(started, now)
        return started

    def set_exclusive(self, jobs: I32 | I64) -> None:
        """Make jobs exclusive: their nodes run nothing else while they run.

        Raises
        ------
        IndexError
            For an unknown job (nothing is changed).
        ValueError
            For a job already running (its nodes' flags follow the setting).
        """
        self._q.set_exclusive(jobs, np.ones(len(jobs), dtype=np.uint8))

    def add_reservation(self, start: int, end: int, nodes: list[int], owner: str = "") -> int:
        """Keep ``nodes`` for project ``owner`` (a job ``group``) during ``[start, end)``.

        Other jobs may use those nodes only if they end, by their estimate, before ``start``;
        with no owner (or one without a quota entry) nobody may (a maintenance window).

        Raises
        ------
        InputError
            For an empty window or an unknown node.
        """
        project = -1
        if owner and self.quotas is not None:
            project = int(self.quotas.projects_of((owner,))[0])
        if owner and project < 0:
            raise InputError(f"reservation owner {owner!r} has no quota entry", field="owner")
        try:
            return int(self._q.add_reservation(start, end, nodes, project))
        except (ValueError, IndexError, TypeError) as exc:
            raise InputError(str(exc), field="reservation") from None

    def set_elastic(self, jobs: I32 | I64, min_tasks: I32) -> None:
        """Make jobs elastic: they may run with ``min_tasks`` up to their ``num_tasks`` tasks.

        They start as large as fits, grow into idle capacity when nobody waits, and shrink to
        their minimum instead of being evicted when preemption needs room. A minimum above a
        job's ``num_tasks`` means ``num_tasks`` (not elastic).

        Raises
        ------
        IndexError
            For an unknown job (nothing is changed).
        ValueError
            For a minimum below one or arrays of different lengths.
        """
        self._q.set_min_tasks(jobs, min_tasks)

    def resized(self) -> I32:
        """Return the running jobs whose task count the last cycle changed."""
        return np.asarray(self._q.resized(), dtype=np.int32)

    def tasks_of(self, job: int) -> int:
        """Tasks a running job has now (its ``num_tasks`` otherwise); ``IndexError`` if unknown."""
        return int(self._q.tasks_of(job))

    def terminating(self, job: int) -> bool:
        """Whether an evicted job is still within its grace period; ``IndexError`` if unknown."""
        return bool(self._q.terminating(job))

    def preempted(self) -> I32:
        """Jobs the last cycle evicted (already back in the queue)."""
        return np.asarray(self._q.preempted(), dtype=np.int32)

    def lost_work(self, job: int, now: int) -> float:
        """Resource-seconds a running job would lose if stopped at ``now``.

        Raises
        ------
        IndexError
            For an unknown job.
        ValueError
            When ``now`` is outside +-2**56 seconds.
        """
        return float(self._q.lost_work(job, now))

    def finish(self, jobs: I32 | I64, now: int) -> int:
        """Release finished jobs' resources at ``now``; returns how many were running.

        Unknown jobs and jobs not running are skipped.
        """
        done = int(self._q.finish_many(jobs))
        if self.queue_sort is not None:
            # Only ids of real jobs reach the plugin (an int32 cast would wrap the others).
            ids = np.asarray(jobs, dtype=np.int64).reshape(-1)
            known = ids[(ids >= 0) & (ids < self.num_jobs)].astype(np.int32)
            self.queue_sort.on_finish(known, now)
        return done

    def requeue(self, job: int, now: int) -> bool:
        """Stop a running job and put it back in the queue (preemption, node failure).

        Returns False (and changes nothing) for an unknown job or one not running.
        """
        ok = bool(self._q.requeue(job).ok)
        if ok and self.queue_sort is not None:
            self.queue_sort.on_finish(np.asarray([job], dtype=np.int32), now)
        return ok

    def restore(
        self, job: int, start: int, nodes: Sequence[int] | I32, gpus: Sequence[int] | I32
    ) -> str:
        """Put a job that already runs back on exactly its nodes and devices.

        For crash recovery and for rebuilding the scheduler when the set of nodes changes: the
        placement policy is not run, node flags (down, cordoned, draining) are ignored and quota
        usage is charged without an admission check. Exclusivity is kept: an exclusive job
        needs idle nodes and no job joins the nodes of a running exclusive job. The job must be
        new or pending (a pending job leaves the queue); it runs from ``start`` on, and a
        queue-sort plugin is told it started at ``start``. On failure nothing changes.

        Parameters
        ----------
        job
            Scheduler index of the job.
        start
            When the job started (seconds, >= 0; the clock of ``cycle``).
        nodes
            One node per task, as the first array of :meth:`placement_of` returns. An elastic
            job may have any count from its minimum to its ``num_tasks``; other jobs exactly
            ``num_tasks``.
        gpus
            Local device indices of every task in task order (``num_gpu`` per task for GPU
            jobs, one device for a shared ``gpu_milli < 1000`` task, empty for CPU-only jobs),
            as the second array of :meth:`placement_of` returns.

        Returns
        -------
        str
            ``"ok"``, or the failing status code: ``invalid_argument`` (unknown job, a job
            not new or pending, a bad task count, device layout, node or device index),
            ``insufficient_cpu``, ``insufficient_memory`` or ``insufficient_gpu`` (the
            resources are taken), ``node_unavailable`` (exclusivity would be broken).

        Raises
        ------
        InputError
            When ``nodes`` or ``gpus`` are not integers.
        """
        limit = np.iinfo(np.int32)
        columns: list[I32] = []
        for name, values in (("nodes", nodes), ("gpus", gpus)):
            raw = np.asarray(values).reshape(-1)
            if raw.size == 0:
                columns.append(np.zeros(0, dtype=np.int32))
                continue
            if raw.dtype.kind not in "iu":
                raise InputError(f"{name} must be integer indices", field=name)
            if int(raw.min()) < limit.min or int(raw.max()) > limit.max:
                return "invalid_argument"  # no node or device has such an index
            columns.append(raw.astype(np.int32))
        if not (0 <= job <= limit.max and 0 <= start <= np.iinfo(np.int64).max):
            return "invalid_argument"
        status = self._q.restore(job, start, columns[0], columns[1])
        if not status.ok:
            return str(status.code)
        if self.queue_sort is not None:
            self.queue_sort.on_start(np.asarray([job], dtype=np.int32), start)
        return "ok"

    def cancel(self, job: int) -> bool:
        """Remove a pending job; False (and nothing changes) for an unknown or not pending one."""
        return bool(self._q.cancel(job).ok)

    def placement_of(self, job: int) -> tuple[I32, I32]:
        """Nodes (one per task) and GPU devices of a running job; ``IndexError`` if unknown."""
        return (
            np.asarray(self._q.nodes_of(job), dtype=np.int32),
            np.asarray(self._q.gpus_of(job), dtype=np.int32),
        )

    def job_state(self, job: int) -> str:
        """Return the job's state: ``new``, ``pending``, ``running``, ``done`` or ``cancelled``.

        Raises
        ------
        IndexError
            For an unknown job.
        """
        return str(self._q.state(job))

    def reservation(self, job: int) -> int:
        """First reservation given to the job while it waited (-1 if none).

        Raises
        ------
        IndexError
            For an unknown job.
        """
        return int(self._q.reservation(job))

    def reservations(self) -> I64:
        """First reservation of every job (-1 where none), by scheduler index."""
        return np.asarray(self._q.reservations(), dtype=np.int64)

    def pending_reason(self, job: int) -> str:
        """Why a pending job has not started (the rejecting plugin's code).

        Raises
        ------
        IndexError
            For an unknown job.
        """
        code = str(self._q.reason(job))
        return "queued" if code == "ok" else code

    @property
    def num_pending(self) -> int:
        """Jobs waiting."""
        return int(self._q.num_pending)

    @property
    def num_running(self) -> int:
        """Jobs running."""
        return int(self._q.num_running)

    @property
    def num_jobs(self) -> int:
        """Jobs registered (in any state)."""
        return int(self._q.num_jobs)

    def start_time(self, job: int) -> int:
        """When a running job started (-1 if it is not running); ``IndexError`` if unknown."""
        return int(self._q.start_time(job))

    def usage(self, group: str) -> tuple[int, int, int]:
        """Milli-CPU, MiB and milli-GPU a project's running jobs hold (zeros without a quota)."""
        if self.quotas is None:
            return (0, 0, 0)
        project = int(self.quotas.projects_of((group,))[0])
        if project < 0:
            return (0, 0, 0)
        cpu, mem, gpu = self._q.usage(project)
        return (int(cpu), int(mem), int(gpu))
