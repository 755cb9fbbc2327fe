"""Restoring running jobs' exact placements into a fresh ``Scheduler`` (crash recovery).

A scheduler whose cycles started jobs is rebuilt from scratch: every running job is put back
with ``Scheduler.restore`` from ``placement_of``. The rebuilt scheduler must hold exactly the
same cluster state, fragmentation and quota usage, and then decide exactly as the original.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cplat.errors import InputError
from cplat.fragmentation import TargetWorkload
from cplat.model import GpuModels, NodeTable
from cplat.profile import POLICIES
from cplat.scheduler import JobColumns, QueuePolicy, Quota, Quotas, Scheduler, job_columns
from cplat.traces.schema import JOB_SCHEMA

FAST = settings(max_examples=60, deadline=None)
MODELS = GpuModels(("A", "B"))
# Deterministic placement profiles (the random ones draw from the engine's generator, whose
# position a rebuilt scheduler cannot know).
PROFILES = ("bestfit", "fgd", "packing", "clustering", "dotprod", "worstfit")
#: (cpu_milli, memory_mib, num_gpu, gpu_milli) task shapes: CPU only, shares, whole devices.
SHAPES = (
    (2000, 4096, 0, 0),
    (1000, 2048, 1, 250),
    (2000, 2048, 1, 500),
    (4000, 8192, 1, 1000),
    (8000, 16384, 2, 1000),
    (8000, 16384, 4, 1000),
)
WORKLOAD = TargetWorkload(
    cpu_milli=np.asarray([1000, 2000, 4000, 8000], dtype=np.int64),
    num_gpu=np.asarray([1, 1, 1, 2], dtype=np.int32),
    gpu_milli=np.asarray([250, 500, 1000, 1000], dtype=np.int32),
    models=np.zeros(4, dtype=np.uint64),
    weight=np.asarray([0.25, 0.25, 0.25, 0.25], dtype=np.float64),
)


def cluster() -> NodeTable:
    """Eight nodes: 4- and 8-GPU nodes of two models, a CPU-only node, a 2-GPU node."""
    gpus = [4, 8, 0, 2, 4, 8, 0, 2]
    return NodeTable(
        name=tuple(f"n{i}" for i in range(len(gpus))),
        cpu_milli=np.asarray([32000, 64000, 16000, 24000] * 2, dtype=np.int64),
        memory_mib=np.asarray([131072, 262144, 65536, 98304] * 2, dtype=np.int64),
        num_gpu=np.asarray(gpus, dtype=np.int32),
        gpu_model=np.asarray([0, 1, -1, 0, 0, 1, -1, 0], dtype=np.int32),
        models=MODELS,
        rack=np.asarray([0, 0, 0, 0, 1, 1, 1, 1], dtype=np.int32),
        spine=np.zeros(8, dtype=np.int32),
    )


def jobs(rows: list[dict[str, Any]]) -> JobColumns:
    """Job rows with keys submit, shape (index into SHAPES), width and optional group."""
    n = len(rows)
    shape = [SHAPES[int(r.get("shape", 0))] for r in rows]
    table = pa.table(
        {
            "job_id": np.arange(n, dtype=np.int64),
            "submit_time": np.asarray([r.get("submit", 0) for r in rows], dtype=np.int64),
            "duration": np.asarray([r.get("duration", 100) for r in rows], dtype=np.int64),
            "requested_time": np.asarray([r.get("duration", 100) for r in rows], dtype=np.int64),
            "num_tasks": np.asarray([r.get("width", 1) for r in rows], dtype=np.int32),
            "cpu_milli": np.asarray([s[0] for s in shape], dtype=np.int64),
            "memory_mib": np.asarray([s[1] for s in shape], dtype=np.int64),
            "num_gpu": np.asarray([s[2] for s in shape], dtype=np.int32),
            "gpu_milli": np.asarray([s[3] for s in shape], dtype=np.int32),
            "gpu_models": [""] * n,
            "user": ["u"] * n,
            "group": [str(r.get("group", "")) for r in rows],
            "priority": np.zeros(n, dtype=np.int32),
            "queue": ["q"] * n,
        },
        schema=JOB_SCHEMA,
    )
    return job_columns(table, MODELS)


def scheduler(
    profile: str = "bestfit",
    queue: QueuePolicy | None = None,
    quotas: Quotas | None = None,
    queue_sort: Any = None,
) -> Scheduler:
    return Scheduler(
        cluster(),
        placement=POLICIES[profile],
        queue=queue,
        seed=3,
        workload=WORKLOAD,
        quotas=quotas,
        queue_sort=queue_sort,
    )


def state_of(s: Scheduler) -> dict[str, Any]:
    """Everything the cluster state and fragmentation index expose, copied."""
    return {
        "cpu_free": s.state.cpu_free.copy(),
        "memory_free": s.state.memory_free.copy(),
        "gpu_free": s.state.gpu_free.copy(),
        "flags": s.state.flags.copy(),
        "allocated": s.state.allocated_gpu_milli,
        "kinds": [[s.state.kind_count(n, k) for k in range(17)] for n in range(s.state.num_nodes)],
        "node_frag": s.engine.node_frag.copy(),
    }


def assert_same_state(a: Scheduler, b: Scheduler) -> None:
    x, y = state_of(a), state_of(b)
    for key in x:
        assert np.array_equal(np.asarray(x[key]), np.asarray(y[key])), key
    assert a.engine.frag_total == pytest.approx(b.engine.frag_total, rel=1e-12, abs=1e-9)
    assert b.state.check_invariants()


def running(s: Scheduler, n: int) -> list[int]:
    return [j for j in range(n) if s.job_state(j) == "running"]


def restore_all(src: Scheduler, dst: Scheduler, order: list[int]) -> None:
    for j in order:
        nodes, gpus = src.placement_of(j)
        assert dst.restore(j, int(src._q.start_time(j)), nodes, gpus) == "ok"


# --- rebuilding a scheduler ------------------------------------------------------------------


@FAST
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {
                "submit": st.integers(0, 3),
                "shape": st.integers(0, len(SHAPES) - 1),
                "width": st.integers(1, 4),
                "group": st.sampled_from(["a", "b", ""]),
            }
        ),
        min_size=2,
        max_size=30,
    ),
    later=st.lists(
        st.fixed_dictionaries(
            {
                "submit": st.just(50),
                "shape": st.integers(0, len(SHAPES) - 1),
                "width": st.integers(1, 3),
                "group": st.sampled_from(["a", "b", ""]),
            }
        ),
        min_size=1,
        max_size=8,
    ),
    profile=st.sampled_from(PROFILES),
    backfill=st.sampled_from(["none", "easy", "conservative"]),
    done=st.sets(st.integers(0, 29), max_size=6),
    pending_in_rebuild=st.booleans(),
    data=st.data(),
)
def test_rebuilt_scheduler_matches(
    rows: list[dict[str, Any]],
    later: list[dict[str, Any]],
    profile: str,
    backfill: str,
    done: set[int],
    pending_in_rebuild: bool,
    data: st.DataObject,
) -> None:
    quotas = Quotas(
        [
            Quota("a", (200000, 1 << 20, 12000), borrowing_limit=(0, 0, 4000), cohort="c"),
            Quota("b", (200000, 1 << 20, 12000), borrowing_limit=(0, 0, 4000), cohort="c"),
        ]
    )
    queue = QueuePolicy(backfill=backfill)
    table = jobs(rows + later)
    first = len(rows)
    live = scheduler(profile, queue, quotas)
    live.add_jobs(table)
    live.submit(np.arange(first, dtype=np.int32))
    live.cycle(0)
    finished = np.asarray([j for j in running(live, first) if j in done], dtype=np.int32)
    live.finish(finished, 5)
    live.cycle(5)

    back = scheduler(profile, queue, quotas)
    back.add_jobs(table)
    run = running(live, first)
    waiting = [j for j in range(first) if live.job_state(j) == "pending"]
    # The service knows its queue: pending jobs are submitted again. Running jobs are either
    # re-submitted first (pending until restored) or restored straight from "new".
    back.submit(np.asarray(waiting + (run if pending_in_rebuild else []), dtype=np.int32))
    order = data.draw(st.permutations(run))
    restore_all(live, back, order)

    assert_same_state(live, back)
    assert back.num_running == live.num_running
    assert back.num_pending == live.num_pending
    assert sorted(back._q.pending_jobs().tolist()) == sorted(live._q.pending_jobs().tolist())
    for p in (0, 1):
        assert back._q.usage(p) == live._q.usage(p)
    for j in run:
        assert back.job_state(j) == "running"
        assert back._q.start_time(j) == live._q.start_time(j)
        for x, y in zip(back.placement_of(j), live.placement_of(j), strict=True):
            assert np.array_equal(x, y)

    # The same later submissions and finishes lead to the same decisions.
    tail = np.arange(first, first + len(later), dtype=np.int32)
    assert live.submit(tail) == back.submit(tail)
    for now in (50, 60):
        started = live.cycle(now)
        assert np.array_equal(started, back.cycle(now))
        for j in started.tolist():
            for x, y in zip(back.placement_of(j), live.placement_of(j), strict=True):
                assert np.array_equal(x, y)
        assert_same_state(live, back)
        stop = np.asarray(running(live, len(table))[:2], dtype=np.int32)
        assert live.finish(stop, now + 1) == back.finish(stop, now + 1)
    # Finishing everything leaves both clusters empty.
    everything = np.asarray(running(back, len(table)), dtype=np.int32)
    assert back.finish(everything, 100) == len(everything)
    empty = scheduler(profile)
    assert_same_state(back, empty)
    assert back._q.usage(0) == [0, 0, 0] and back._q.usage(1) == [0, 0, 0]


# --- failures change nothing -----------------------------------------------------------------


def started_pair() -> tuple[Scheduler, Scheduler, int]:
    """A live scheduler running one 2-task job on whole GPUs, and an empty rebuild."""
    table = jobs([{"shape": 4, "width": 2}, {"shape": 4, "width": 2}, {"shape": 1}])
    live = scheduler()
    live.add_jobs(table)
    live.submit(np.asarray([0], dtype=np.int32))
    assert live.cycle(0).tolist() == [0]
    back = scheduler()
    back.add_jobs(table)
    return live, back, 0


def test_restore_onto_occupied_gpus_fails_and_changes_nothing() -> None:
    live, back, job = started_pair()
    nodes, gpus = live.placement_of(job)
    assert back.restore(job, 0, nodes, gpus) == "ok"
    back.submit(np.asarray([1, 2], dtype=np.int32))
    before = state_of(back)
    frag = back.engine.frag_total
    # Job 1 has the same shape: on exactly job 0's devices it cannot go.
    assert back.restore(1, 0, nodes, gpus) == "insufficient_gpu"
    # Only its second task collides: its first task is rolled back.
    other = [n for n in (0, 1, 4, 5) if n not in nodes.tolist()]  # 4- and 8-GPU nodes, idle
    mixed_nodes = np.asarray([other[0], nodes[1]], dtype=np.int32)
    mixed_gpus = np.asarray([0, 1, gpus[2], gpus[3]], dtype=np.int32)
    assert back.restore(1, 0, mixed_nodes, mixed_gpus) == "insufficient_gpu"
    # A share of a device a whole-GPU task holds.
    assert back.restore(2, 0, nodes[:1], gpus[:1]) == "insufficient_gpu"
    after = state_of(back)
    for key in before:
        assert np.array_equal(np.asarray(before[key]), np.asarray(after[key])), key
    assert back.engine.frag_total == pytest.approx(frag)
    assert back.job_state(1) == "pending" and back.job_state(2) == "pending"
    assert back.num_pending == 2 and back.num_running == 1


def test_restore_invalid_arguments() -> None:
    live, back, job = started_pair()
    nodes, gpus = live.placement_of(job)
    before = state_of(back)
    assert back.restore(job, 0, nodes[:1], gpus[:2]) == "invalid_argument"  # 2 tasks needed
    assert back.restore(job, 0, nodes, gpus[:3]) == "invalid_argument"  # 2 devices per task
    assert back.restore(job, 0, [nodes[0], 8], gpus) == "invalid_argument"  # no node 8
    assert back.restore(job, 0, nodes, [0, 1, 2, 99]) == "invalid_argument"  # no device 99
    assert back.restore(job, 0, nodes, [0, 0, 1, 2]) == "invalid_argument"  # device named twice
    assert back.restore(job, 0, nodes, [0, 1, 2**40, 3]) == "invalid_argument"
    assert back.restore(job, -1, nodes, gpus) == "invalid_argument"
    assert back.restore(99, 0, nodes, gpus) == "invalid_argument"
    assert back.restore(-1, 0, nodes, gpus) == "invalid_argument"
    assert back.restore(job, 0, [], []) == "invalid_argument"
    with pytest.raises(InputError):
        back.restore(job, 0, np.asarray([0.5, 1.0]), gpus)
    after = state_of(back)
    for key in before:
        assert np.array_equal(np.asarray(before[key]), np.asarray(after[key])), key
    assert back.job_state(job) == "new"
    # A (tasks x devices) array reads as the flat layout.
    assert back.restore(job, 0, nodes, np.asarray(gpus).reshape(2, 2)) == "ok"


def test_restore_of_running_done_or_cancelled_job_fails() -> None:
    live, back, job = started_pair()
    nodes, gpus = live.placement_of(job)
    assert back.restore(job, 0, nodes, gpus) == "ok"
    before = state_of(back)
    assert back.restore(job, 0, nodes, gpus) == "invalid_argument"
    assert live.restore(job, 0, nodes, gpus) == "invalid_argument"  # running in live too
    back.finish(np.asarray([job], dtype=np.int32), 10)
    assert back.restore(job, 0, nodes, gpus) == "invalid_argument"  # done
    back.submit(np.asarray([1], dtype=np.int32))
    assert back.cancel(1)
    assert back.restore(1, 0, nodes, gpus) == "invalid_argument"  # cancelled
    assert back.job_state(job) == "done" and back.job_state(1) == "cancelled"
    empty = scheduler()
    assert_same_state(back, empty)
    assert before["allocated"] == 4000


# --- shared GPUs, pending jobs, finish -------------------------------------------------------


def test_restore_shared_gpu_tasks() -> None:
    # Shares of one device: 250 + 500 fit, another 500 does not.
    table = jobs([{"shape": 1, "width": 2}, {"shape": 2}, {"shape": 2}])
    s = scheduler()
    s.add_jobs(table)
    begin = int(s.state.gpu_begin[0])
    assert s.restore(0, 0, [0, 0], [1, 1]) == "ok"  # two 250 shares on device 1 of node 0
    assert s.restore(1, 0, [0], [1]) == "ok"
    assert int(s.state.gpu_free[begin + 1]) == 0
    assert s.restore(2, 0, [0], [1]) == "insufficient_gpu"
    assert s.restore(2, 0, [0], [3]) == "ok"
    assert int(s.state.gpu_free[begin + 3]) == 500
    assert s.state.allocated_gpu_milli == 1500
    assert s.state.kind_count(0, 0) == 4  # four shared tasks on node 0
    assert s.placement_of(0)[1].tolist() == [1, 1]
    assert s.finish(np.asarray([0, 1, 2], dtype=np.int32), 5) == 3
    assert_same_state(s, scheduler())


def test_restore_shared_gpu_matches_cycle() -> None:
    rows = [{"shape": k % 3, "width": 1 + k % 2} for k in range(12)]
    live = scheduler("fgd")
    live.add_jobs(jobs(rows))
    live.submit(np.arange(12, dtype=np.int32))
    assert len(live.cycle(0)) == 12
    back = scheduler("fgd")
    back.add_jobs(jobs(rows))
    restore_all(live, back, list(reversed(range(12))))
    assert_same_state(live, back)
    assert any(0 < f < 1000 for f in back.state.gpu_free.tolist())


def test_restore_pending_job_leaves_the_queue() -> None:
    table = jobs([{"shape": 3, "width": 1}, {"shape": 3, "width": 1}, {"shape": 0}])
    s = scheduler()
    s.add_jobs(table)
    assert s.submit(np.arange(3, dtype=np.int32)) == 3
    assert s.num_pending == 3
    assert s.restore(1, 7, [1], [5]) == "ok"
    assert s.num_pending == 2 and s.num_running == 1
    assert s.job_state(1) == "running"
    assert 1 not in s._q.pending_jobs().tolist()
    assert s._q.start_time(1) == 7
    started = s.cycle(10)
    assert sorted(started.tolist()) == [0, 2]  # job 1 never starts twice
    assert s.num_pending == 0 and s.num_running == 3
    assert s.placement_of(1)[0].tolist() == [1] and s.placement_of(1)[1].tolist() == [5]
    # Requeued, it is back in the queue exactly once.
    assert s.requeue(1, 20)
    assert s._q.pending_jobs().tolist() == [1]
    assert s.cycle(21).tolist() == [1]
    assert s.num_pending == 0


def test_restore_locked_head_unblocks_the_queue() -> None:
    # The head (five 4-GPU tasks) is blocked and locked while the 8-GPU nodes are cordoned;
    # restoring it where it really runs (cordoned nodes included) lets the queue move on.
    table = jobs([{"shape": 5, "width": 5, "submit": 0}, {"shape": 0, "submit": 1}])
    s = scheduler(queue=QueuePolicy(lock_head=True))
    s.add_jobs(table)
    s.state.set_flags(1, 2)
    s.state.set_flags(5, 2)
    s.submit(np.asarray([0, 1], dtype=np.int32))
    assert s.cycle(0).tolist() == []
    assert s.pending_reason(1) == "queued"  # waits behind the head, no backfill
    nodes = np.asarray([0, 1, 1, 4, 5], dtype=np.int32)
    gpus = np.asarray([0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 0, 1, 2, 3], dtype=np.int32)
    assert s.restore(0, 0, nodes, gpus) == "ok"
    assert s.num_pending == 1
    assert s.cycle(1).tolist() == [1]


def test_finish_after_restore_releases_everything() -> None:
    rows = [{"shape": k % len(SHAPES), "width": 1 + k % 3, "group": "a"} for k in range(10)]
    quotas = Quotas([Quota("a", (10**6, 10**7, 10**5))])
    live = scheduler(quotas=quotas)
    live.add_jobs(jobs(rows))
    live.submit(np.arange(10, dtype=np.int32))
    live.cycle(0)
    run = running(live, 10)
    assert len(run) >= 3
    back = scheduler(quotas=quotas)
    back.add_jobs(jobs(rows))
    restore_all(live, back, run)
    assert back._q.usage(0) == live._q.usage(0) != [0, 0, 0]
    assert back.finish(np.asarray(run, dtype=np.int32), 10) == len(run)
    assert back.num_running == 0
    assert back._q.usage(0) == [0, 0, 0]
    assert_same_state(back, scheduler())


# --- node flags, exclusivity, elastic jobs, queue-sort plugins -------------------------------


def test_restore_ignores_cordon_and_drain() -> None:
    s = scheduler()
    s.add_jobs(jobs([{"shape": 3}]))
    s.state.set_flags(0, 2 | 4)  # cordoned and draining: the job already runs there
    assert s.restore(0, 0, [0], [2]) == "ok"
    assert int(s.state.flags[0]) == 6


def test_restore_keeps_exclusivity() -> None:
    s = scheduler()
    s.add_jobs(jobs([{"shape": 0}, {"shape": 0}, {"shape": 0, "width": 2}]))
    s.set_exclusive(np.asarray([0], dtype=np.int32))
    assert s.restore(1, 0, [2], []) == "ok"
    assert s.restore(0, 0, [2], []) == "node_unavailable"  # node 2 is not idle
    assert s.job_state(0) == "new"
    assert s.restore(0, 0, [6], []) == "ok"
    assert int(s.state.flags[6]) & 16  # kNodeExclusive
    assert s.restore(2, 0, [3, 6], []) == "node_unavailable"  # nobody joins it
    assert s.restore(2, 0, [3, 7], []) == "ok"
    s.finish(np.asarray([0], dtype=np.int32), 5)
    assert int(s.state.flags[6]) == 0


def test_restore_elastic_job() -> None:
    s = scheduler()
    s.add_jobs(jobs([{"shape": 0, "width": 4}]))
    s.set_elastic(np.asarray([0], dtype=np.int32), np.asarray([2], dtype=np.int32))
    assert s.restore(0, 0, [2], []) == "invalid_argument"  # below its minimum
    assert s.restore(0, 0, [2, 2, 2, 2, 2], []) == "invalid_argument"  # above num_tasks
    assert s.restore(0, 0, [2, 6, 6], []) == "ok"
    assert s.tasks_of(0) == 3
    assert int(s.state.cpu_free[6]) == 16000 - 4000


class Recorder:
    """A queue-sort plugin that records what it is told."""

    def __init__(self) -> None:
        self.started: list[tuple[list[int], int]] = []

    def add_jobs(self, jobs: JobColumns, index: Any) -> None:
        pass

    def on_start(self, jobs: Any, now: int) -> None:
        self.started.append((list(jobs.tolist()), now))

    def on_finish(self, jobs: Any, now: int) -> None:
        pass

    def priorities(self, pending: Any, now: int) -> Any:
        return np.zeros(len(pending), dtype=np.float64)


def test_restore_notifies_queue_sort() -> None:
    rec = Recorder()
    s = scheduler(queue=QueuePolicy(order="priority"), queue_sort=rec)
    s.add_jobs(jobs([{"shape": 3}, {"shape": 3}]))
    assert s.restore(1, 42, [0], [0]) == "ok"
    assert s.restore(0, 42, [0], [0]) == "insufficient_gpu"  # failures are not reported
    assert rec.started == [([1], 42)]


def test_requeue_right_after_a_start_queues_the_job_once() -> None:
    # The start leaves a stale entry in the pending list until the next cycle; a requeue in
    # between must not put the job in the queue twice.
    s = scheduler()
    s.add_jobs(jobs([{"shape": 0}]))
    s.submit(np.asarray([0], dtype=np.int32))
    assert s.cycle(0).tolist() == [0]
    assert s.requeue(0, 1)
    assert s._q.pending_jobs().tolist() == [0]
    assert s.num_pending == 1
