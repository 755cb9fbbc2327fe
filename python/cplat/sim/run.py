"""Discrete-event simulator: replays a trace through :class:`cplat.scheduler.Scheduler`.

Events are ordered by (time, kind, sequence): at one instant, finishes and node repairs come
first, then node failures, then submissions, then one scheduling cycle. Time is integer
seconds. The same inputs and seed give the same decision log, byte for byte.
"""

from __future__ import annotations

import heapq
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

# Event kinds, in processing order at equal times.
_FINISH, _GRACE_END, _NODE_UP, _NODE_DOWN, _TICK = 0, 1, 2, 3, 4
_NODE_DOWN_FLAG = 1

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


@dataclass(frozen=True)
class FaultModel:
    """Independent node failures: exponential time between failures and to repair (seconds)."""

    mtbf: float
    mttr: float
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mtbf <= 0 or self.mttr <= 0:
            raise ValueError("mtbf and mttr must be positive")


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
        Called as ``progress(done, total)`` every few thousand finished jobs.
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
    ck = checkpoint or Checkpointing(0, 0)
    work_left = cols.duration.copy()
    weight = np.where(
        cols.num_gpu > 0,
        cols.num_tasks.astype(np.int64) * cols.num_gpu * cols.gpu_milli,
        cols.num_tasks.astype(np.int64) * np.maximum(cols.cpu_milli, 1),
    ).astype(np.float64)
    lost = 0.0
    preemptions = 0
    idx = sched.add_jobs(cols)
    boundary_ticks: list[int] = []
    if exclusive is not None:
        sched.set_exclusive(idx[np.asarray(exclusive, dtype=bool)])
    elastic = elastic_min is not None
    if elastic_min is not None:
        sched.set_elastic(idx, np.minimum(np.asarray(elastic_min, dtype=np.int32), cols.num_tasks))
    for r_start, r_end, r_nodes, r_owner in reservations or []:
        sched.add_reservation(r_start, r_end, r_nodes, r_owner)
        # A window's end frees its nodes for everyone: schedule then too.
        boundary_ticks.append(r_end)
    n = len(cols)
    order = np.lexsort((idx, cols.submit)).astype(np.int32)
    submit_sorted = cols.submit[order]
    start = np.full(n, -1, dtype=np.int64)
    end = np.full(n, -1, dtype=np.int64)
    restarts = np.zeros(n, dtype=np.int32)
    generation = np.zeros(n, dtype=np.int64)  # invalidates finish events of requeued jobs
    placed_nodes: dict[int, npt.NDArray[np.int32]] = {}  # running jobs (fault tracking)
    empty = np.zeros(0, dtype=np.int32)
    assigned: list[npt.NDArray[np.int32]] = [empty] * n  # nodes of each job's last start
    devices: list[npt.NDArray[np.int32]] = [empty] * n
    log: list[str] = []
    events: list[tuple[int, int, int, int, int]] = []  # (time, kind, seq, item, generation)
    seq = 0
    rng = np.random.Generator(np.random.PCG64(faults.seed if faults else seed))
    track_nodes = faults is not None
    on_node: list[set[int]] = [set() for _ in range(len(nodes))] if track_nodes else []
    node_failures = 0
    if faults is not None:
        first = rng.exponential(faults.mtbf, size=len(nodes))
        for node, t in enumerate(first):
            heapq.heappush(events, (int(t), _NODE_DOWN, seq, node, 0))
            seq += 1
    if tick is not None and tick <= 0:
        raise ValueError("tick must be positive")
    for t_b in boundary_ticks:
        heapq.heappush(events, (t_b, _TICK, seq, 0, 0))
        seq += 1

    # Work is counted in seconds at the job's full size; an elastic job with c of its N tasks
    # progresses at c/N of that rate. Each run segment starts at seg_start with cur tasks.
    full = cols.num_tasks.astype(np.int64)
    cur = full.copy()
    seg_start = np.full(n, -1, dtype=np.int64)

    def segment_wall(job: int) -> int:
        # Wall time to finish the remaining work with the current tasks, checkpoints included.
        work = int(work_left[job])
        scaled = -(-work * int(full[job]) // max(int(cur[job]), 1))
        return ck.wall_time(scaled)

    def stopped(job: int, now: int, why: str, final_checkpoint: bool = False) -> None:
        # A running job was stopped (preempted or its node failed): it keeps the work its
        # checkpoints secured and loses the rest. With a grace period it has just written a
        # final checkpoint (the last `cost` seconds), securing everything before it.
        nonlocal lost
        elapsed = now - int(seg_start[job])
        rate = int(cur[job]) / int(full[job])
        scaled_left = -(-int(work_left[job]) * int(full[job]) // max(int(cur[job]), 1))
        if final_checkpoint and ck.interval > 0 and elapsed >= ck.cost:
            periods = (elapsed - ck.cost) // (ck.interval + ck.cost)
            saved = min(scaled_left, elapsed - ck.cost - periods * ck.cost)
            wasted = 0
        else:
            saved = ck.saved_work(elapsed, scaled_left)
            periods = saved // ck.interval if ck.interval > 0 else 0
            wasted = elapsed - periods * (ck.interval + ck.cost)
        lost += wasted * weight[job] * rate
        work_left[job] -= min(int(work_left[job]), int(saved * rate))
        generation[job] += 1
        restarts[job] += 1
        start[job] = -1
        if track_nodes:
            for other in placed_nodes.pop(job, empty):
                on_node[int(other)].discard(job)
        if record_log:
            log.append(f"{now}\trequeue\t{int(cols.job_id[job])}\t{why}")

    limit = horizon if horizon is not None else np.iinfo(np.int64).max
    track_gpu = nodes.total_gpu_milli > 0
    series: list[tuple[int, int, float]] = []
    next_tick = -1
    i = 0
    done = 0
    cycles = 0
    n_events = 0
    while i < n or events:
        t_sub = int(submit_sorted[i]) if i < n else np.iinfo(np.int64).max
        t_evt = events[0][0] if events else np.iinfo(np.int64).max
        now = min(t_sub, t_evt)
        if now > limit:
            break
        finished: list[int] = []
        while events and events[0][0] == now:
            _, kind, _, item, gen = heapq.heappop(events)
            n_events += 1
            if kind == _FINISH:
                if gen != generation[item]:
                    continue
                finished.append(item)
            elif kind == _TICK:
                continue
            elif kind == _GRACE_END:
                if gen == generation[item] and sched.terminating(item):
                    sched.requeue(item, now)
                    stopped(item, now, "preempted after its grace period", final_checkpoint=True)
            elif kind == _NODE_DOWN:
                node_failures += 1
                sched.state.set_flags(item, _NODE_DOWN_FLAG)
                sched.engine.node_changed(item)
                for job in sorted(on_node[item]):
                    sched.requeue(job, now)
                    stopped(job, now, f"node {item} down")
                repair = now + max(1, int(rng.exponential(faults.mttr if faults else 1.0)))
                heapq.heappush(events, (repair, _NODE_UP, seq, item, 0))
                seq += 1
                if record_log:
                    log.append(f"{now}\tnode_down\t{item}")
            elif kind == _NODE_UP:
                sched.state.set_flags(item, 0)
                sched.engine.node_changed(item)
                nxt = now + max(1, int(rng.exponential(faults.mtbf if faults else 1.0)))
                heapq.heappush(events, (nxt, _NODE_DOWN, seq, item, 0))
                seq += 1
                if record_log:
                    log.append(f"{now}\tnode_up\t{item}")
        if finished:
            arr = np.asarray(finished, dtype=np.int32)
            sched.finish(arr, now)
            end[arr] = now
            done += len(finished)
            for job in finished:
                if track_nodes:
                    for node in placed_nodes.pop(job):
                        on_node[int(node)].discard(job)
                if record_log:
                    log.append(f"{now}\tfinish\t{int(cols.job_id[job])}")
            if progress is not None and done % 5000 < len(finished):
                progress(done, n)
        j = i
        while j < n and submit_sorted[j] == now:
            j += 1
        if j > i:
            sched.submit(order[i:j])
            i = j
        if tick is not None and now % tick != 0:
            # Periodic scheduling: wait for the next tick (one pending tick event at a time).
            due = (now // tick + 1) * tick
            if due != next_tick and sched.num_pending > 0:
                heapq.heappush(events, (due, _TICK, seq, 0, 0))
                seq += 1
                next_tick = due
            continue
        started = sched.cycle(now)
        cycles += 1
        # One cycle may start a job and evict it again (or evict then restart it): stopped
        # runs are those that began before this cycle; starts count if the job still runs.
        grace = queue.grace_period if queue is not None else 0
        for job in sched.preempted().tolist():
            preemptions += 1
            if grace > 0 and sched.terminating(job):
                heapq.heappush(events, (now + grace, _GRACE_END, seq, job, int(generation[job])))
                seq += 1
                if record_log:
                    log.append(f"{now}\tevict\t{int(cols.job_id[job])}\tgrace {grace} s")
            elif start[job] >= 0:
                stopped(job, now, "preempted")
        if len(started):
            started = started[[sched.job_state(int(j)) == "running" for j in started]]
        if elastic:
            fresh = set(started.tolist())
            for job in sched.resized().tolist():
                if job in fresh or start[job] < 0:
                    continue
                # Bank the work done at the old size, continue at the new one.
                done = (now - int(seg_start[job])) * int(cur[job]) // int(full[job])
                work_left[job] = max(int(work_left[job]) - done, 0)
                cur[job] = sched.tasks_of(job)
                seg_start[job] = now
                generation[job] += 1
                heapq.heappush(
                    events, (now + segment_wall(job), _FINISH, seq, job, int(generation[job]))
                )
                seq += 1
                where, gpus = sched.placement_of(job)
                assigned[job] = where
                devices[job] = gpus
                if track_nodes:
                    for node in set(placed_nodes.get(job, empty).tolist()):
                        on_node[node].discard(job)
                    placed_nodes[job] = where
                    for node in set(where.tolist()):
                        on_node[node].add(job)
                if record_log:
                    log.append(f"{now}\tresize\t{int(cols.job_id[job])}\t{int(cur[job])} tasks")
        if track_gpu:
            series.append((now, sched.state.allocated_gpu_milli, sched.engine.frag_total))
        if len(started):
            start[started] = now
            for job in started.tolist():
                cur[job] = sched.tasks_of(job) if elastic else full[job]
                seg_start[job] = now
                t_end = now + segment_wall(job)
                heapq.heappush(events, (t_end, _FINISH, seq, job, int(generation[job])))
                seq += 1
                where, gpus = sched.placement_of(job)
                assigned[job] = where
                devices[job] = gpus
                if track_nodes:
                    placed_nodes[job] = where
                    for node in set(where.tolist()):
                        on_node[node].add(job)
                if record_log:
                    log.append(
                        f"{now}\tstart\t{int(cols.job_id[job])}\t"
                        + ",".join(str(x) for x in where.tolist())
                    )
        if faults is not None and i >= n and sched.num_pending == 0 and sched.num_running == 0:
            break  # only node events are left
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
            "nodes": _list_array(assigned),
            "gpus": _list_array(devices),
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
        events=n_events,
        cycles=cycles,
        node_failures=node_failures,
        preemptions=preemptions,
        lost_work=lost,
        capacity_cpu_milli=int(nodes.cpu_milli.sum()),
        capacity_gpu_milli=nodes.total_gpu_milli,
        gpu_series=np.asarray(series, dtype=np.float64).reshape(-1, 3),
    )
