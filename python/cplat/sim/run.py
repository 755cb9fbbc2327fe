"""Discrete-event simulator: replays a trace through :class:`cplat.scheduler.Scheduler`.

Events are ordered by (time, kind, sequence): at one instant, finishes and node repairs come
first, then node failures, then submissions, then one scheduling cycle. Time is integer
seconds. The same inputs and seed give the same decision log, byte for byte.

:func:`simulate` assembles the parts and turns their books into a result: the event queue
(:mod:`cplat.sim.events`), the job ledger (:mod:`cplat.sim.ledger`), node failures
(:mod:`cplat.sim.faults`) and the loop with its handlers (:mod:`cplat.sim.replay`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from cplat.fragmentation import TargetWorkload, target_workload
from cplat.model import NodeTable, TaskTable
from cplat.profile import Profile
from cplat.scheduler import (
    Checkpointing,
    JobColumns,
    QueuePolicy,
    QueueSort,
    Quotas,
    Scheduler,
    job_columns,
)
from cplat.sim.events import EventQueue, Kind
from cplat.sim.faults import FaultModel, NodeFaults
from cplat.sim.ledger import JobLedger
from cplat.sim.replay import PROGRESS_EVERY, Replay

__all__ = ["RESULT_SCHEMA", "FaultModel", "SimResult", "simulate"]

RESULT_SCHEMA = pa.schema(
    [
        pa.field("job_id", pa.int64(), nullable=False),
        pa.field("submit", pa.int64(), nullable=False),
        pa.field("start", pa.int64(), nullable=False),  # -1: never started
        pa.field("end", pa.int64(), nullable=False),  # -1: not finished by the horizon
        pa.field("status", pa.string(), nullable=False),  # completed | unfinished | never_started
        pa.field("num_tasks", pa.int32(), nullable=False),
        pa.field("cpu_milli", pa.int64(), nullable=False),
        pa.field("num_gpu", pa.int32(), nullable=False),
        pa.field("gpu_milli", pa.int32(), nullable=False),
        pa.field("user", pa.string(), nullable=False),
        pa.field("group", pa.string(), nullable=False),
        pa.field("restarts", pa.int32(), nullable=False),
        pa.field("nodes", pa.list_(pa.int32()), nullable=False),  # one node per task
        pa.field("gpus", pa.list_(pa.int32()), nullable=False),  # devices, num_gpu per task
        pa.field("pending_reason", pa.string(), nullable=False),  # why a job never started
    ]
)


def _list_array(parts: list[npt.NDArray[np.int32]]) -> pa.ListArray:
    lengths = np.fromiter((len(p) for p in parts), dtype=np.int32, count=len(parts))
    offsets = np.zeros(len(parts) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.astype(np.int32)))


@dataclass
class SimResult:
    """Per-job outcome, the decision log and the run's bookkeeping."""

    jobs: pa.Table
    columns: JobColumns
    start: npt.NDArray[np.int64]
    end: npt.NDArray[np.int64]
    reservation: npt.NDArray[np.int64]  # first reservation while waiting, -1 if none
    log: list[str] = field(default_factory=list)
    events: int = 0
    cycles: int = 0
    node_failures: int = 0
    preemptions: int = 0
    lost_work: float = 0.0  # resource-seconds of work lost to preemption and failures
    capacity_cpu_milli: int = 0
    capacity_gpu_milli: int = 0
    # GPU clusters: after every scheduling cycle, (time, allocated milli-GPU, fragmented milli-GPU).
    gpu_series: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 3)))


def simulate(
    jobs: pa.Table,
    nodes: NodeTable,
    *,
    placement: Profile | None = None,
    queue: QueuePolicy | None = None,
    seed: int = 0,
    workload: TargetWorkload | None = None,
    queue_sort: QueueSort | None = None,
    quotas: Quotas | None = None,
    checkpoint: Checkpointing | None = None,
    horizon: int | None = None,
    exclusive: npt.NDArray[np.bool_] | None = None,
    elastic_min: npt.NDArray[np.int32] | None = None,
    reservations: list[tuple[int, int, list[int], str]] | None = None,
    faults: FaultModel | None = None,
    tick: int | None = None,
    record_log: bool = False,
    progress: Callable[[int, int], None] | None = None,
    native: bool | None = None,
) -> SimResult:
    """Replay ``jobs`` (canonical job table) on ``nodes`` and return what happened.

    Parameters
    ----------
    jobs
        Canonical job table (``cplat.traces.schema.JOB_SCHEMA``).
    nodes
        The cluster.
    placement, queue
        Where and when (see :class:`~cplat.scheduler.Scheduler`).
    seed
        Seed for the engine's tie-breaking and the fault model's default stream.
    workload
        Target workload for fragmentation-aware placement.
    queue_sort
        Queue-sort plugin (fair share, DRF, ...) with the ``priority`` order.
    quotas
        Per-project quotas (a job's project is its ``group``).
    checkpoint
        Checkpoint rhythm: a stopped job resumes from its last checkpoint (default: never
        checkpoints, restarts from zero).
    horizon
        Stop at this time; running jobs are reported unfinished, pending ones never started.
    exclusive
        Per job: run alone on its nodes.
    elastic_min
        Per job: the fewest tasks it can run with (elastic when below its ``num_tasks``); its
        speed scales with the tasks it has.
    reservations
        ``(start, end, nodes, owner group)`` advance reservations.
    faults
        Optional node failure model; jobs on a failed node go back to the queue.
    tick
        Schedule only at multiples of ``tick`` seconds (a periodic scheduler, like a batch
        system's scheduling interval) instead of at every event.
    record_log
        Keep the decision log (one line per start, finish, requeue, node event).
    progress
        Called as ``progress(finished, total)`` every few thousand finished jobs and once when
        the replay ends.
    native
        Run the event loop in native code (same events in the same order, so the same
        result, many times faster). It can when there is no fault model, preemption, elastic
        job, queue-sort plugin, tick or decision log. ``None`` (default): whenever it can;
        ``False``: the Python loop; ``True``: the native loop or ``ValueError``.

    Raises
    ------
    ValueError
        For a tick that is not positive, or ``native=True`` for a run the native loop cannot do.
    InputError
        When a job names a GPU model the cluster does not have.
    """
    cols = job_columns(jobs, nodes.models)
    if workload is None and placement is not None and placement.needs_workload:
        # Fragmentation-aware placement measures against the trace's own task shapes.
        workload = target_workload(
            TaskTable(
                name=tuple(str(j) for j in cols.job_id),
                cpu_milli=cols.cpu_milli,
                memory_mib=cols.memory_mib,
                num_gpu=cols.num_gpu,
                gpu_milli=cols.gpu_milli,
                gpu_spec=tuple(jobs.column("gpu_models").to_pylist()),
                models=cols.models,
            )
        )
    sched = Scheduler(nodes, placement, queue, seed, workload, queue_sort, quotas, checkpoint)
    idx = sched.add_jobs(cols)
    # The ledger, the events and the result address jobs by their row: so must the scheduler.
    assert np.array_equal(idx, np.arange(len(cols))), "a fresh scheduler numbers jobs by row"
    if exclusive is not None:
        sched.set_exclusive(idx[np.asarray(exclusive, dtype=bool)])
    if elastic_min is not None:
        sched.set_elastic(idx, np.minimum(np.asarray(elastic_min, dtype=np.int32), cols.num_tasks))
    events = EventQueue()
    for r_start, r_end, r_nodes, r_owner in reservations or []:
        sched.add_reservation(r_start, r_end, r_nodes, r_owner)
        # A window's end frees its nodes for everyone: schedule then too.
        events.push(r_end, Kind.TICK)
    plain = (
        faults is None
        and queue_sort is None
        and elastic_min is None
        and tick is None
        and not record_log
        and (queue is None or queue.preemption == "none")
        and (horizon is None or horizon >= 0)
    )
    if native and not plain:
        raise ValueError(
            "the native loop runs without faults, preemption, elastic jobs, a queue sort, "
            "a tick or a decision log"
        )
    if plain and native is not False:
        return _native(sched, cols, nodes, checkpoint, reservations, horizon, progress)
    ledger = JobLedger(cols, checkpoint)
    faulty = NodeFaults(faults, len(nodes)) if faults is not None else None
    log: list[str] = []
    replay = Replay(
        sched,
        cols,
        ledger,
        events,
        faults=faulty,
        grace=queue.grace_period if queue is not None else 0,
        tick=tick,
        horizon=horizon,
        elastic=elastic_min is not None,
        track_gpu=nodes.total_gpu_milli > 0,
        log=log if record_log else None,
        progress=progress,
    )
    replay.run()
    return _from_replay(sched, cols, ledger, replay, nodes, log)


def _native(
    sched: Scheduler,
    cols: JobColumns,
    nodes: NodeTable,
    checkpoint: Checkpointing | None,
    reservations: list[tuple[int, int, list[int], str]] | None,
    horizon: int | None,
    progress: Callable[[int, int], None] | None,
) -> SimResult:
    """Replay in the native loop (:class:`cplat._core.Replay`) and build the result."""
    n = len(cols)
    work = np.maximum(cols.duration.astype(np.int64), 0)
    ck = checkpoint or Checkpointing(0, 0)
    wall = work
    if ck.interval > 0:
        wall = np.where(work > 0, work + ck.cost * ((work - 1) // ck.interval), 0)
    wakeups = np.asarray([r[1] for r in reservations or []], dtype=np.int64)
    track_gpu = nodes.total_gpu_milli > 0
    loop = sched.native_replay(wall.astype(np.int64), wakeups, horizon, track_gpu)
    goal = PROGRESS_EVERY
    while not loop.run(goal if progress is not None else n + 1):
        if progress is not None:
            progress(loop.finished, n)
        goal = (loop.finished // PROGRESS_EVERY + 1) * PROGRESS_EVERY
    if progress is not None:
        progress(loop.finished, n)
    node_off, node_flat = loop.nodes()
    gpu_off, gpu_flat = loop.gpus()
    return _result(
        sched,
        cols,
        nodes,
        log=[],
        start=loop.start(),
        end=loop.end(),
        restarts=np.zeros(n, dtype=np.int32),
        assigned=_list_from(node_off, node_flat),
        devices=_list_from(gpu_off, gpu_flat),
        events=loop.events,
        cycles=loop.cycles,
        gpu_series=loop.gpu_series(),
    )


def _list_from(offsets: npt.NDArray[np.int64], values: npt.NDArray[np.int32]) -> pa.ListArray:
    return pa.ListArray.from_arrays(
        pa.array(offsets.astype(np.int32)), pa.array(values.astype(np.int32))
    )


def _from_replay(
    sched: Scheduler,
    cols: JobColumns,
    ledger: JobLedger,
    replay: Replay,
    nodes: NodeTable,
    log: list[str],
) -> SimResult:
    """Turn a finished Python replay's books into a :class:`SimResult`."""
    return _result(
        sched,
        cols,
        nodes,
        log=log,
        start=ledger.start,
        end=ledger.end,
        restarts=ledger.restarts,
        assigned=_list_array(ledger.assigned),
        devices=_list_array(ledger.devices),
        events=replay.events.popped,
        cycles=replay.cycles,
        node_failures=replay.faults.failures if replay.faults is not None else 0,
        preemptions=replay.preemptions,
        lost_work=ledger.lost,
        gpu_series=np.asarray(replay.gpu_series, dtype=np.float64),
    )


def _result(
    sched: Scheduler,
    cols: JobColumns,
    nodes: NodeTable,
    *,
    log: list[str],
    start: npt.NDArray[np.int64],
    end: npt.NDArray[np.int64],
    restarts: npt.NDArray[np.int32],
    assigned: pa.ListArray,
    devices: pa.ListArray,
    events: int,
    cycles: int,
    gpu_series: npt.NDArray[np.float64],
    node_failures: int = 0,
    preemptions: int = 0,
    lost_work: float = 0.0,
) -> SimResult:
    """Build a :class:`SimResult` from a finished replay's books."""
    n = len(cols)
    status = np.where(end >= 0, "completed", np.where(start >= 0, "unfinished", "never_started"))
    reasons = [sched.pending_reason(j) if status[j] == "never_started" else "" for j in range(n)]
    table = pa.table(
        {
            "job_id": cols.job_id,
            "submit": cols.submit,
            "start": start,
            "end": end,
            "status": status.tolist(),
            "num_tasks": cols.num_tasks,
            "cpu_milli": cols.cpu_milli,
            "num_gpu": cols.num_gpu,
            "gpu_milli": cols.gpu_milli,
            "user": list(cols.user),
            "group": list(cols.group),
            "restarts": restarts,
            "nodes": assigned,
            "gpus": devices,
            "pending_reason": reasons,
        },
        schema=RESULT_SCHEMA,
    )
    return SimResult(
        jobs=table,
        columns=cols,
        start=start,
        end=end,
        reservation=sched.reservations(),
        log=log,
        events=events,
        cycles=cycles,
        node_failures=node_failures,
        preemptions=preemptions,
        lost_work=lost_work,
        capacity_cpu_milli=int(nodes.cpu_milli.sum()),
        capacity_gpu_milli=nodes.total_gpu_milli,
        gpu_series=gpu_series.reshape(-1, 3),
    )
