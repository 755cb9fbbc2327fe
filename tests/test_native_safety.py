"""The native core checks every argument: bad input raises, it never crashes the interpreter.

Each public entry point of ``cplat._core`` (and of :class:`cplat.scheduler.Scheduler` on top of
it) once indexed its tables unchecked: ``Scheduler(synthetic_cluster()).job_state(5)`` was a
segmentation fault. Indices and ids outside their table now raise ``IndexError``, bad values
``ValueError``, wrong types ``TypeError``, and a refused call changes nothing. The regression
tests below cover every entry point found; the state machine at the end drives a scheduler with
random sequences of valid and invalid calls and checks its accounting after every step. It is
small enough to run under AddressSanitizer and UndefinedBehaviorSanitizer (tools/sanitize.sh
runs the whole suite there).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from cplat import _core
from cplat.cluster import new_engine, new_state
from cplat.errors import InputError
from cplat.model import GpuModels, NodeTable
from cplat.pack.synthetic import synthetic_cluster
from cplat.profile import POLICIES
from cplat.scheduler import JobColumns, QueuePolicy, Quota, Quotas, Scheduler

#: Bounds of the native core (cpp/include/cplat/types.hpp).
MAX_TIME = 2**56
MAX_QUANTITY = 2**36
MAX_TASKS = 2**20


def nodes() -> NodeTable:
    """Four nodes: two with 2 GPUs of model A, one CPU-only, one with 4 GPUs of model B."""
    return NodeTable(
        name=("a", "b", "c", "d"),
        cpu_milli=np.array([8000, 8000, 4000, 16000], dtype=np.int64),
        memory_mib=np.array([16384, 16384, 8192, 32768], dtype=np.int64),
        num_gpu=np.array([2, 2, 0, 4], dtype=np.int32),
        gpu_model=np.array([0, 0, -1, 1], dtype=np.int32),
        models=GpuModels(("A", "B")),
        rack=np.array([0, 0, 1, 1], dtype=np.int32),
    )


Row = tuple[int, int, int, int, int, int, int, int, str]  # submit .. priority, group


def columns(rows: list[Row]) -> JobColumns:
    """Rows of (submit, requested, num_tasks, cpu, mem, num_gpu, gpu_milli, priority, group)."""
    n = len(rows)
    col = list(zip(*rows, strict=True)) if rows else [()] * 9
    requested = np.asarray(col[1], dtype=np.int64)
    return JobColumns(
        job_id=np.arange(n, dtype=np.int64),
        submit=np.asarray(col[0], dtype=np.int64),
        duration=requested,
        requested=requested,
        estimated=np.zeros(n, dtype=bool),
        num_tasks=np.asarray(col[2], dtype=np.int32),
        cpu_milli=np.asarray(col[3], dtype=np.int64),
        memory_mib=np.asarray(col[4], dtype=np.int64),
        num_gpu=np.asarray(col[5], dtype=np.int32),
        gpu_milli=np.asarray(col[6], dtype=np.int32),
        models=np.zeros(n, dtype=np.uint64),
        priority=np.asarray(col[7], dtype=np.int32),
        user=("u",) * n,
        group=tuple(str(g) for g in col[8]),
    )


def small_scheduler() -> Scheduler:
    """A scheduler with four jobs: 0 and 1 running, 2 pending (fits no node), 3 new.

    EASY backfilling, so that the blocked job 2 does not hold back the jobs behind it.
    """
    s = Scheduler(nodes(), queue=QueuePolicy(backfill="easy"))
    s.add_jobs(
        columns(
            [
                (0, 100, 2, 1000, 1024, 1, 1000, 0, ""),
                (0, 50, 1, 2000, 2048, 0, 0, 0, ""),
                (1, 10, 1, 64000, 1024, 0, 0, 0, ""),
                (2, 10, 1, 1000, 1024, 1, 500, 0, ""),
            ]
        )
    )
    assert s.submit(np.arange(3, dtype=np.int32)) == 3
    assert s.cycle(1).tolist() == [0, 1]
    return s


def still_usable(s: Scheduler) -> None:
    """The scheduler still works after a refused call: nothing was half done."""
    assert s.state.check_invariants()
    assert (s.job_state(0), s.job_state(2), s.job_state(3)) == ("running", "pending", "new")
    assert s.placement_of(0)[0].size == 2 and s.start_time(0) == 1
    assert s.pending_reason(2) == "insufficient_cpu"
    (new,) = s.add_jobs(columns([(5, 10, 1, 500, 512, 0, 0, 0, "")])).tolist()
    assert s.submit(np.asarray([3, new], dtype=np.int32)) == 2
    assert sorted(s.cycle(6).tolist()) == [3, new]
    assert s.finish(np.asarray([0, 1, 3, new], dtype=np.int32), 7) == 4
    assert s.num_running == 0 and s.num_pending == 1
    assert (s.state.cpu_free == s.state.cpu_capacity).all()
    assert s.state.check_invariants()


# --- The crash of the issue, and every query of the scheduler ------------------------------


def test_job_state_of_an_empty_scheduler_raises() -> None:
    s = Scheduler(synthetic_cluster())
    with pytest.raises(IndexError, match=r"job 5 out of range \[0, 0\)"):
        s.job_state(5)
    assert s.num_jobs == 0


QUERIES: dict[str, Callable[[Scheduler, int], object]] = {
    "job_state": Scheduler.job_state,
    "start_time": Scheduler.start_time,
    "pending_reason": Scheduler.pending_reason,
    "placement_of": Scheduler.placement_of,
    "tasks_of": Scheduler.tasks_of,
    "reservation": Scheduler.reservation,
    "terminating": Scheduler.terminating,
    "lost_work": lambda s, job: s.lost_work(job, 10),
}


@pytest.mark.parametrize("query", sorted(QUERIES))
@pytest.mark.parametrize("job", [4, 5, -1, -(2**31), 2**31, 2**62])
def test_queries_with_a_bad_job_raise_index_error(query: str, job: int) -> None:
    s = small_scheduler()
    with pytest.raises(IndexError, match=f"job {job} out of range"):
        QUERIES[query](s, job)
    still_usable(s)


@pytest.mark.parametrize("query", sorted(QUERIES))
@pytest.mark.parametrize("job", [2**64, 1.5, "0", None])
def test_queries_with_a_job_of_the_wrong_type_raise_type_error(query: str, job: Any) -> None:
    s = small_scheduler()
    with pytest.raises(TypeError):
        QUERIES[query](s, job)
    still_usable(s)


# --- Scheduler operations ------------------------------------------------------------------


def test_job_operations_refuse_unknown_jobs_without_raising() -> None:
    s = small_scheduler()
    for bogus in (-1, 4, 2**31, 2**62):
        assert s.cancel(bogus) is False
        assert s.requeue(bogus, 5) is False
        assert s.restore(bogus, 0, [0], [0]) == "invalid_argument"
    bogus_ids = np.asarray([-1, 4, 2**40, 2**62], dtype=np.int64)
    assert s.submit(bogus_ids) == 0
    assert s.finish(bogus_ids, 5) == 0
    # Ids beyond int32 no longer wrap onto real jobs (2**32 + 2 was job 2).
    assert s.submit(np.asarray([2**32 + 3], dtype=np.int64)) == 0
    assert s.finish(np.asarray([2**32], dtype=np.int64), 5) == 0
    still_usable(s)


@pytest.mark.parametrize(
    "ids",
    [
        np.asarray([2**63], dtype=np.uint64),  # does not fit int64
        [1.0],  # floats are not ids
        ["3"],
        [[0, 1], [2]],  # ragged
    ],
)
def test_job_arrays_of_the_wrong_kind_raise(ids: Any) -> None:
    s = small_scheduler()
    with pytest.raises((TypeError, ValueError)):
        s.submit(ids)
    with pytest.raises((TypeError, ValueError)):
        s.finish(ids, 5)
    still_usable(s)


def test_set_exclusive_checks_jobs_and_running_state() -> None:
    s = small_scheduler()
    with pytest.raises(IndexError, match="job 9 out of range"):
        s.set_exclusive(np.asarray([3, 9], dtype=np.int32))
    with pytest.raises(ValueError, match="job 0 is running"):
        s.set_exclusive(np.asarray([3, 0], dtype=np.int32))
    still_usable(s)
    s.set_exclusive(np.asarray([2], dtype=np.int32))


@pytest.mark.parametrize(
    ("jobs", "minimum", "error"),
    [
        ([3, 7], [1, 1], IndexError),
        ([-1], [1], IndexError),
        ([3], [0], ValueError),
        ([3], [-4], ValueError),
        ([3, 2], [1], ValueError),  # one minimum per job
    ],
)
def test_set_elastic_checks_every_entry_first(
    jobs: list[int], minimum: list[int], error: type[Exception]
) -> None:
    s = small_scheduler()
    with pytest.raises(error):
        s.set_elastic(np.asarray(jobs, dtype=np.int32), np.asarray(minimum, dtype=np.int32))
    still_usable(s)


@pytest.mark.parametrize("now", [MAX_TIME + 1, -MAX_TIME - 1, 2**63 - 1])
def test_cycle_and_lost_work_refuse_times_out_of_range(now: int) -> None:
    s = small_scheduler()
    with pytest.raises(ValueError, match="now must be in"):
        s.cycle(now)
    with pytest.raises(ValueError, match="now must be in"):
        s.lost_work(0, now)
    still_usable(s)


def test_add_jobs_is_all_or_nothing() -> None:
    s = small_scheduler()
    bad = columns([(3, 10, 1, 500, 0, 0, 0, 0, ""), (MAX_TIME + 1, 10, 1, 500, 0, 0, 0, 0, "")])
    with pytest.raises(ValueError, match="submit must be in"):
        s.add_jobs(bad)
    assert s.num_jobs == 4
    still_usable(s)


@pytest.mark.parametrize(
    "row",
    [
        (3, 10, 0, 500, 0, 0, 0, 0, ""),  # no task
        (3, 10, -2, 500, 0, 0, 0, 0, ""),
        (3, 10, MAX_TASKS + 1, 0, 0, 0, 0, 0, ""),
        (3, 10, 1, -1, 0, 0, 0, 0, ""),
        (3, 10, 1, MAX_QUANTITY + 1, 0, 0, 0, 0, ""),
        (3, 10, 1, 0, 2**62, 0, 0, 0, ""),
        (3, 10, 1, 0, 0, 1, 1500, 0, ""),
        (3, 10, 1, 0, 0, -1, 1000, 0, ""),
        (3, 10, 1, 0, 0, 2**20, 1000, 0, ""),
    ],
)
def test_invalid_jobs_are_registered_but_never_submitted(row: Row) -> None:
    s = small_scheduler()
    (job,) = s.add_jobs(columns([row])).tolist()
    assert s.submit(np.asarray([job], dtype=np.int32)) == 0
    assert s.job_state(job) == "new"
    assert s.restore(job, 0, [0], []) == "invalid_argument"
    still_usable(s)


def test_a_run_time_estimate_of_forever_does_not_overflow() -> None:
    s = Scheduler(nodes(), queue=QueuePolicy(backfill="conservative"))
    jobs = s.add_jobs(
        columns(
            [
                (0, 2**63 - 1, 1, 8000, 1024, 0, 0, 0, ""),  # clamped to 2**56 s
                (0, 10, 4, 8000, 1024, 0, 0, 0, ""),  # waits for it
                (0, 10, 1, 500, 0, 0, 0, 0, ""),
            ]
        )
    )
    assert s.submit(jobs) == 3
    assert s.cycle(MAX_TIME).tolist() == [0, 2]
    assert s.job_state(1) == "pending" and s.lost_work(0, MAX_TIME) == 0.0
    assert s.state.check_invariants()


def test_reservations_check_their_nodes_and_window() -> None:
    s = small_scheduler()
    for args in [(0, 10, [0, 4]), (0, 10, [-1]), (10, 10, [0]), (0, MAX_TIME + 1, [0])]:
        with pytest.raises(InputError):
            s.add_reservation(*args)
    still_usable(s)
    assert s.add_reservation(100, 200, [0, 1]) == 0


def test_restore_refuses_out_of_range_values() -> None:
    s = small_scheduler()
    assert s.restore(3, MAX_TIME + 1, [0], [0]) == "invalid_argument"
    assert s.restore(3, 0, [2**40], [0]) == "invalid_argument"
    with pytest.raises(InputError):
        s.restore(3, 0, [0.5], [0])  # type: ignore[list-item]
    still_usable(s)


@pytest.mark.parametrize(
    "queue",
    [
        QueuePolicy(calendar_resolution=0),
        QueuePolicy(calendar_horizon=-1),
        QueuePolicy(max_backfill_jobs=-1),
        QueuePolicy(grace_period=-1),
        QueuePolicy(grace_period=MAX_TIME + 1),
    ],
)
def test_queue_options_out_of_range_raise(queue: QueuePolicy) -> None:
    with pytest.raises(ValueError, match="must be in"):
        Scheduler(nodes(), queue=queue)


def test_quotas_are_checked_and_unlimited_ones_do_not_overflow() -> None:
    with pytest.raises(ValueError, match="lending_limit"):
        Scheduler(nodes(), quotas=Quotas([Quota("a", (1, 1, 1), lending_limit=(-1, 0, 0))]))
    big = (2**63 - 1,) * 3  # "unlimited"
    quotas = Quotas(
        [Quota(p, big, big, big, cohort="org") for p in ("a", "b", "c")],
        cohort_limits={"org": big},
    )
    s = Scheduler(nodes(), quotas=quotas, queue=QueuePolicy(preemption="both"))
    jobs = s.add_jobs(columns([(0, 10, 2, 2000, 1024, 1, 1000, 0, g) for g in "abc"]))
    assert s.submit(jobs) == 3
    assert s.cycle(0).tolist() == [0, 1, 2]
    assert s.usage("a") == (4000, 2048, 2000)


# --- The native module directly ------------------------------------------------------------


def state_and_engine() -> tuple[_core.ClusterState, _core.Engine]:
    state = new_state(nodes())
    return state, new_engine(state, POLICIES["bestfit"], 0)


@pytest.mark.parametrize(
    "call",
    [
        lambda st, e: st.set_flags(4, 1),
        lambda st, e: st.set_flags(-1, 1),
        lambda st, e: st.kind_count(0, 17),
        lambda st, e: st.kind_count(4, 0),
        lambda st, e: st.kinds_present(-1),
        lambda st, e: e.node_changed(4),
        lambda st, e: _core.gang_span(st, np.asarray([0, 9], dtype=np.int32)),
    ],
)
def test_cluster_and_engine_indices_raise_index_error(call: Callable[..., object]) -> None:
    state, engine = state_and_engine()
    with pytest.raises(IndexError, match="out of range"):
        call(state, engine)
    status, node, _ = engine.place(1000, 1024, 0, 0, 0)
    assert status.ok and 0 <= node < 4
    assert state.check_invariants()


def test_cluster_columns_are_checked() -> None:
    n = np.zeros(1, dtype=np.int32)
    with pytest.raises(ValueError, match="cpu_milli"):
        _core.ClusterState([MAX_QUANTITY + 1], [0], n, n - 1, n, n)
    with pytest.raises(ValueError, match="same length"):
        _core.ClusterState([1000, 1000], [0], n, n - 1, n, n)
    # 2**32 + 2 would have wrapped to 2 GPUs in the int32 column.
    with pytest.raises(ValueError, match="num_gpu: 4294967298 does not fit int32"):
        _core.ClusterState([1000], [0], np.asarray([2**32 + 2]), n, n, n)
    with pytest.raises(TypeError, match="integers"):
        _core.ClusterState([1000.5], [0], n, n - 1, n, n)
    state = _core.ClusterState([], [], [], [], [], [])  # empty columns of any dtype
    assert state.num_nodes == 0


def test_engine_values_are_checked() -> None:
    state, engine = state_and_engine()
    empty: list[int] = []
    with pytest.raises(ValueError, match="scorer weights"):
        _core.Engine(state, [("bestfit", 2**40)], "best", empty, empty, empty, empty, [], 0)
    with pytest.raises(ValueError, match="workload weight 0"):
        _core.Engine(state, [("fgd", 1)], "fgd", [1000], [1], [500], [0], [math.nan], 0)
    with pytest.raises(ValueError, match="model must be in"):
        _core.node_fragmentation([1000], [1], [500], [0], [1.0], 0, 64, [1000])
    with pytest.raises(ValueError, match="one id per GPU"):
        _core.set_gpu_topology(state, np.zeros(3, dtype=np.int32), np.zeros(8, dtype=np.int32))
    # Inspection takes any shape, but amounts out of bounds would overflow the scorers.
    for request in [
        (-5, 0, 0, 0),
        (0, MAX_QUANTITY + 1, 0, 0),
        (0, 0, 1, -(2**31)),
        (0, 0, 1, 1001),
    ]:
        with pytest.raises(ValueError, match="request amounts"):
            engine.filter(*request, 0)
        with pytest.raises(ValueError, match="request amounts"):
            engine.score("fgd", *request, 0)
    assert len(engine.filter(1000, 0, 3, 500, 0)) == 4  # several shares: not placeable
    # Invalid requests and gang counts answer a status, as place() does.
    for count in (0, -1, MAX_TASKS + 1):
        assert engine.place_gang(0, 0, 0, 0, 0, count)[0].code == "invalid_argument"
    status, _ = engine.place_gang_on(1000, 0, 0, 0, 0, np.asarray([0, 7], dtype=np.int32))
    assert status.code == "invalid_argument"
    assert state.check_invariants() and state.allocated_gpu_milli == 0


def test_calendar_values_are_checked() -> None:
    with pytest.raises(ValueError, match="resolution"):
        _core.Calendar(0, [1, 1, 1], 0)
    cal = _core.Calendar(0, [1, 1, 1], 5, 100)
    with pytest.raises(ValueError, match="t must be in"):
        cal.add_release(2**61, [1, 1, 1])
    with pytest.raises(ValueError, match="amount"):
        cal.reserve(0, 10, [0, 2**62, 0])
    with pytest.raises(ValueError, match="duration"):
        cal.earliest_start([1, 1, 1], 2**62, 0)
    with pytest.raises(TypeError):
        cal.fits(0, 10, [1, 1])  # three dimensions
    assert cal.steps == 1 and cal.free_at(50) == [1, 1, 1]


def test_native_queue_entry_points_are_checked() -> None:
    state, engine = state_and_engine()
    q = _core.QueueScheduler(engine)
    with pytest.raises(IndexError, match="project 0"):
        q.usage(0)
    with pytest.raises(IndexError, match="job 0"):
        q.set_priorities([0], [1.0])
    q.add_jobs([0], [10], [1], [1000], [0], [0], [0], [0], [0.0])
    with pytest.raises(ValueError, match="NaN"):
        q.set_priorities([0], [math.nan])
    with pytest.raises(ValueError, match="NaN"):
        q.add_jobs([0], [10], [1], [1000], [0], [0], [0], [0], [math.nan])
    with pytest.raises(IndexError, match="job 3"):
        q.set_job_meta([0, 3], [-1, -1], [0, 0], [0, 0])
    with pytest.raises(ValueError, match="one entry per job"):
        q.set_job_meta([0], [-1, -1], [0], [0])
    with pytest.raises(ValueError, match="cycle"):
        q.set_quotas([], [], [], [], [1, 0], [-1] * 6)
    with pytest.raises(IndexError, match="parent"):
        q.set_quotas([], [], [], [], [5], [-1] * 3)
    with pytest.raises(ValueError, match="nominal"):
        q.set_quotas([-1], [-1, 0, 0], [0, 0, 0], [0, 0, 0], [], [])
    assert q.num_jobs == 1 and q.submit(0).ok and q.cycle(0).tolist() == [0]
    assert state.check_invariants()


# --- Random call sequences -----------------------------------------------------------------

POLICY_CHOICES = [
    (QueuePolicy(), None),
    (QueuePolicy(order="sjf", backfill="easy"), None),
    (QueuePolicy(order="priority", backfill="easy", preemption="priority"), None),
    (QueuePolicy(backfill="conservative", calendar_resolution=5, calendar_horizon=200), None),
    (
        QueuePolicy(
            order="priority",
            backfill="rlsched",
            topology_aware=True,
            preemption="priority",
            grace_period=5,
        ),
        None,
    ),
    (
        QueuePolicy(backfill="easy", preemption="reclaim", lock_head=True),
        Quotas(
            [
                Quota("a", (8000, 16384, 2000), cohort="org"),
                Quota("b", (8000, 16384, 2000), borrowing_limit=(8000, 16384, 4000), cohort="org"),
            ]
        ),
    ),
]


def mostly(
    valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    """``valid`` four times in five, else ``invalid`` (one_of would pick each half the time)."""
    return st.integers(0, 4).flatmap(lambda k: invalid if k == 0 else valid)


# Mostly valid jobs (so that many run), sometimes a shape submit must refuse.
amount = mostly(st.integers(0, 9000), st.sampled_from([-1, MAX_QUANTITY + 1, 2**62]))
gpu_shape = mostly(
    st.sampled_from([(0, 0), (0, 0), (1, 250), (1, 500), (1, 1000), (2, 1000), (4, 1000)]),
    st.sampled_from([(1, 0), (0, 500), (1, 1500), (-1, 1000)]),
)
tasks = mostly(st.integers(1, 3), st.sampled_from([0, -1, MAX_TASKS + 1]))

#: Job references, resolved against the scheduler when used: an existing job (by position), one
#: just past either end of the table, or a value far outside any table.
job_ref = mostly(
    st.tuples(st.just("real"), st.integers(0, 2**20)),
    st.one_of(
        st.tuples(st.just("past"), st.integers(0, 3)),
        st.tuples(st.just("before"), st.integers(0, 3)),
        st.tuples(st.just("far"), st.sampled_from([-(2**31), 2**31, 2**40, 2**62, -(2**63)])),
    ),
)
Ref = tuple[str, int]
WRONG_TYPES = st.sampled_from([2**64, -(2**64), 0.5, "1", None])
BAD_TIMES = st.sampled_from([MAX_TIME + 1, -MAX_TIME - 1, 2**63 - 1, -(2**63)])


def submittable(row: Row) -> bool:
    """Whether the native queue accepts a job of this shape (Request::valid and the count)."""
    _, _, n, cpu, mem, num_gpu, milli, _, _ = row
    if not (1 <= n <= MAX_TASKS and 0 <= cpu <= MAX_QUANTITY and 0 <= mem <= MAX_QUANTITY):
        return False
    if not (0 <= num_gpu <= 2**16 and 0 <= milli <= 1000):
        return False
    return milli == 0 if num_gpu == 0 else milli > 0 if num_gpu == 1 else milli == 1000


class SchedulerMachine(RuleBasedStateMachine):
    """Valid and invalid calls in random order; the accounting must hold after each."""

    def __init__(self) -> None:
        super().__init__()
        self.s: Scheduler | None = None
        self.now = 0
        self.specs: list[tuple[int, int, int, int]] = []  # per job: cpu, mem, num_gpu, milli
        self.exclusive: set[int] = set()

    @property
    def sched(self) -> Scheduler:
        assert self.s is not None
        return self.s

    def job(self, ref: Ref) -> int:
        kind, value = ref
        n = self.sched.num_jobs
        if kind == "real":
            return value % n if n else 0
        if kind == "past":
            return n + value
        if kind == "before":
            return -1 - value
        return value

    def real(self, job: int) -> bool:
        return 0 <= job < self.sched.num_jobs

    def states(self) -> list[str]:
        return [self.sched.job_state(j) for j in range(self.sched.num_jobs)]

    @initialize(choice=st.sampled_from(range(len(POLICY_CHOICES))), seed=st.integers(0, 3))
    def build(self, choice: int, seed: int) -> None:
        queue, quotas = POLICY_CHOICES[choice]
        self.s = Scheduler(nodes(), queue=queue, quotas=quotas, seed=seed)

    @rule(
        rows=st.lists(
            st.tuples(
                st.integers(0, 5),
                st.one_of(st.integers(-5, 60), st.just(2**63 - 1)),
                tasks,
                amount,
                amount,
                gpu_shape,
                st.integers(-5, 5),
                st.sampled_from(["a", "b", ""]),
            ),
            min_size=1,
            max_size=5,
        ),
        submit_now=st.booleans(),
    )
    def add_jobs(self, rows: list[tuple[Any, ...]], submit_now: bool) -> None:
        flat: list[Row] = [
            (self.now + dt, req, n, cpu, mem, g[0], g[1], prio, group)
            for dt, req, n, cpu, mem, g, prio, group in rows
        ]
        first = self.sched.num_jobs
        index = self.sched.add_jobs(columns(flat))
        assert index.tolist() == list(range(first, first + len(flat)))
        self.specs += [(r[3], r[4], r[5], r[6]) for r in flat]
        if submit_now:
            assert self.sched.submit(index) == sum(submittable(r) for r in flat)
            assert all(
                self.sched.job_state(j) == ("pending" if submittable(r) else "new")
                for j, r in zip(index.tolist(), flat, strict=True)
            )

    @rule(
        priority=st.integers(-5, 5),
        gpu=st.booleans(),
        group=st.sampled_from(["a", "b"]),
        elastic=st.booleans(),
    )
    def crowd(self, priority: int, gpu: bool, group: str, elastic: bool) -> None:
        """Two big valid jobs at once: the cluster fills up, heads block and preempt.

        Elastic ones start smaller, grow into idle capacity and shrink for a head.
        """
        g = (1, 1000) if gpu else (0, 0)
        row: Row = (self.now, 20, 3, 5000, 4096, g[0], g[1], priority, group)
        index = self.sched.add_jobs(columns([row, row]))
        self.specs += [(row[3], row[4], row[5], row[6])] * 2
        if elastic:
            self.sched.set_elastic(index, np.ones(2, dtype=np.int32))
        assert self.sched.submit(index) == 2

    @rule(refs=st.lists(job_ref, max_size=6))
    def submit(self, refs: list[Ref]) -> None:
        jobs = [self.job(r) for r in refs]
        before = self.states()
        accepted = self.sched.submit(np.asarray(jobs, dtype=np.int64))
        after = self.states()
        changed = [j for j in range(len(before)) if before[j] != after[j]]
        assert accepted == len(changed)
        assert all(before[j] == "new" and after[j] == "pending" and j in jobs for j in changed)

    @rule(dt=st.integers(0, 40))
    def cycle(self, dt: int) -> None:
        self.now += dt
        started = self.sched.cycle(self.now).tolist()
        assert len(set(started)) == len(started)
        for j in started:
            assert self.sched.start_time(j) == self.now

    @rule(when=BAD_TIMES, call=st.sampled_from(["add_jobs", "cycle", "lost_work"]))
    def bad_time(self, when: int, call: str) -> None:
        """Times outside +-2**56 s are refused and change nothing."""
        before = self.states()
        if call == "lost_work" and not before:
            call = "cycle"  # no job to ask about yet
        with pytest.raises(ValueError, match="must be in"):
            if call == "add_jobs":
                row: Row = (self.now, 10, 1, 100, 0, 0, 0, 0, "")
                self.sched.add_jobs(columns([row, row, (when, *row[1:])]))
            elif call == "cycle":
                self.sched.cycle(when)
            else:
                self.sched.lost_work(0, when)
        assert self.states() == before

    @rule(refs=st.lists(job_ref, max_size=4))
    def finish(self, refs: list[Ref]) -> None:
        jobs = [self.job(r) for r in refs]
        running = {j for j in jobs if self.real(j) and self.sched.job_state(j) == "running"}
        assert self.sched.finish(np.asarray(jobs, dtype=np.int64), self.now) == len(running)
        assert all(self.sched.job_state(j) == "done" for j in running)

    @rule(ref=job_ref, cancel=st.booleans())
    def stop(self, ref: Ref, cancel: bool) -> None:
        """Requeue a running job or cancel a pending one; anything else is not accepted."""
        job = self.job(ref)
        was = self.sched.job_state(job) if self.real(job) else None
        if cancel:
            assert self.sched.cancel(job) is (was == "pending")
            if was == "pending":
                assert self.sched.job_state(job) == "cancelled"
        else:
            assert self.sched.requeue(job, self.now) is (was == "running")
            if was == "running":
                assert self.sched.job_state(job) == "pending"
                assert self.sched.start_time(job) == -1

    @rule(ref=job_ref, query=st.sampled_from(sorted(QUERIES)), wrong=st.none() | WRONG_TYPES)
    def query(self, ref: Ref, query: str, wrong: Any) -> None:
        """Queries answer for real jobs, IndexError for others, TypeError for non-integers."""
        job = self.job(ref)
        if wrong is not None:
            with pytest.raises(TypeError):
                QUERIES[query](self.sched, wrong)
        elif self.real(job):
            QUERIES[query](self.sched, job)
        else:
            with pytest.raises(IndexError):
                QUERIES[query](self.sched, job)
        if self.real(job):
            assert self.sched.lost_work(job, self.now) >= 0.0
        before = self.states()
        assert self.sched.restore(job, self.now, [9], []) == "invalid_argument"  # no node 9
        assert self.states() == before

    @rule(ref=job_ref, minimum=st.none() | st.integers(-2, 4))
    def configure(self, ref: Ref, minimum: int | None) -> None:
        """Make a job elastic (with a minimum) or exclusive."""
        job = self.job(ref)
        jobs = np.asarray([job], dtype=np.int64)
        if minimum is None:
            running = self.real(job) and self.sched.job_state(job) == "running"
            if not self.real(job):
                with pytest.raises(IndexError):
                    self.sched.set_exclusive(jobs)
            elif running and job not in self.exclusive:
                with pytest.raises(ValueError, match="running"):
                    self.sched.set_exclusive(jobs)
            else:
                self.sched.set_exclusive(jobs)
                self.exclusive.add(job)
            return
        minimums = np.asarray([minimum], dtype=np.int32)
        if not self.real(job):
            with pytest.raises(IndexError):
                self.sched.set_elastic(jobs, minimums)
        elif minimum < 1:
            with pytest.raises(ValueError):
                self.sched.set_elastic(jobs, minimums)
        else:
            self.sched.set_elastic(jobs, minimums)

    @rule(start=st.integers(-5, 50), length=st.integers(-2, 30), at=st.lists(st.integers(-1, 5)))
    def add_reservation(self, start: int, length: int, at: list[int]) -> None:
        t = self.now + start
        if length <= 0 or any(not 0 <= n < 4 for n in at):
            with pytest.raises(InputError):
                self.sched.add_reservation(t, t + length, at)
        else:
            self.sched.add_reservation(t, t + length, at)

    @invariant()
    def accounting(self) -> None:
        if self.s is None:
            return
        s = self.sched
        st_ = s.state
        assert st_.check_invariants()
        states = self.states()
        assert s.num_running == states.count("running")
        assert s.num_pending == states.count("pending")
        cpu = np.zeros(4, dtype=np.int64)
        mem = np.zeros(4, dtype=np.int64)
        gpu = np.zeros(st_.num_gpus, dtype=np.int64)
        begin = st_.gpu_begin
        for j, state in enumerate(states):
            if state != "running":
                continue
            c, m, num_gpu, milli = self.specs[j]
            on, devices = s.placement_of(j)
            per = num_gpu if num_gpu > 0 and milli > 0 else 0
            assert len(on) == s.tasks_of(j) >= 1
            assert len(devices) == len(on) * per
            assert 0 <= s.start_time(j) <= self.now
            for i, n in enumerate(on.tolist()):
                cpu[n] += c
                mem[n] += m
                for g in devices[i * per : (i + 1) * per].tolist():
                    assert 0 <= g < begin[n + 1] - begin[n]
                    gpu[begin[n] + g] += milli
        # No node over-allocated, and the native free amounts are exactly capacity - running.
        assert (cpu <= st_.cpu_capacity).all() and (mem <= st_.memory_capacity).all()
        assert (gpu <= 1000).all()
        assert (st_.cpu_free == st_.cpu_capacity - cpu).all()
        assert (st_.memory_free == st_.memory_capacity - mem).all()
        assert (st_.gpu_free == 1000 - gpu).all()


SchedulerMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_scheduler_survives_random_calls = SchedulerMachine.TestCase
