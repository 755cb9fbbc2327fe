"""Reference twins of the native queue scheduler's policy pieces.

Every function here is the slow, obvious Python version of one piece of the C++ queue
scheduler (``cpp/src/calendar.cpp`` and ``cpp/src/actions/queue.cpp``): the availability
calendar used by backfilling, quota admission with cohort borrowing, the work a preempted job
loses, the queue-order keys and the aggregate victim choice of preemption. They work on plain
ints, floats and tuples; the tests compare the native scheduler against them.

Nothing here is fast or incremental; use the native scheduler for real work.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: Resource vector of the queue: (milli-CPU, MiB, milli-GPU).
Vec = tuple[int, int, int]
#: "Never" answer of :meth:`ReferenceCalendar.earliest_start`.
NEVER = -1
#: Queue orders with a key (the native ``QueueOrder`` names).
QUEUE_ORDERS: tuple[str, ...] = ("fcfs", "sjf", "priority", "wfp3", "unicep", "f1")
#: Preemption modes (the native ``Preemption`` names).
PREEMPTION_MODES: tuple[str, ...] = ("none", "priority", "reclaim", "both")


def covers(have: Sequence[int], need: Sequence[int]) -> bool:
    """Return whether ``have`` is at least ``need`` in every dimension.

    Parameters
    ----------
    have, need
        Resource vectors of equal length.

    Returns
    -------
    bool
        ``True`` when no dimension of ``have`` is below ``need``.
    """
    return all(h >= n for h, n in zip(have, need, strict=True))


def _add(a: Sequence[int], b: Sequence[int], sign: int = 1) -> Vec:
    return (a[0] + sign * b[0], a[1] + sign * b[1], a[2] + sign * b[2])


class ReferenceCalendar:
    """Free capacity over integer time as a list of change events, evaluated by brute force.

    The twin of the native ``Calendar``: free capacity per dimension from ``now`` on; a release
    adds capacity from its (rounded-up) time on forever, a reservation takes capacity during
    ``[start, end)``. Times before ``now`` count as ``now``.

    Parameters
    ----------
    now
        Start of the profile.
    free
        Free capacity from ``now`` on.
    resolution
        Release times are rounded up to ``now + k * resolution`` (values below 1 mean 1).
    horizon
        How far past ``now`` :meth:`earliest_start` may answer (0 or less: unbounded).
    """

    def __init__(self, now: int, free: Sequence[int], resolution: int = 1, horizon: int = 0):
        self.now = now
        self.resolution = max(resolution, 1)
        self.horizon = max(horizon, 0)
        self._base: Vec = (free[0], free[1], free[2])
        self._events: list[tuple[int, Vec]] = []  # (time, change from that time on)
        self._breaks: set[int] = {now}

    @property
    def steps(self) -> int:
        """Number of steps of the profile (distinct breakpoints, ``now`` included)."""
        return len(self._breaks)

    def breakpoints(self) -> list[int]:
        """Return every time at which the free capacity may change, sorted."""
        return sorted(self._breaks)

    def add_release(self, t: int, amount: Sequence[int]) -> None:
        """Make ``amount`` free from ``t`` on (rounded up to the resolution; ``t <= now``: now).

        Parameters
        ----------
        t
            Expected release time.
        amount
            Capacity released.
        """
        t = max(t, self.now)
        if self.resolution > 1 and t > self.now:
            steps = -(-(t - self.now) // self.resolution)  # ceiling of a positive quotient
            t = self.now + steps * self.resolution
        self._events.append((t, _add((0, 0, 0), amount)))
        self._breaks.add(t)

    def reserve(self, start: int, end: int, amount: Sequence[int]) -> None:
        """Take ``amount`` during ``[max(start, now), end)``; an empty interval does nothing.

        Parameters
        ----------
        start, end
            The interval.
        amount
            Capacity taken.
        """
        start = max(start, self.now)
        if end <= start:
            return
        self._events.append((start, _add((0, 0, 0), amount, -1)))
        self._events.append((end, _add((0, 0, 0), amount)))
        self._breaks.update((start, end))

    def free_at(self, t: int) -> Vec:
        """Free capacity at time ``t`` (times before ``now`` count as ``now``).

        Parameters
        ----------
        t
            The time.

        Returns
        -------
        Vec
            Free (milli-CPU, MiB, milli-GPU).
        """
        t = max(t, self.now)
        free = self._base
        for when, delta in self._events:
            if when <= t:
                free = _add(free, delta)
        return free

    def fits(self, start: int, end: int, need: Sequence[int]) -> bool:
        """Return whether ``need`` is free during ``[max(start, now), end)`` (empty: always).

        Parameters
        ----------
        start, end
            The interval.
        need
            Capacity needed throughout.

        Returns
        -------
        bool
            ``True`` when every instant of the interval has ``need`` free.
        """
        start = max(start, self.now)
        if end <= start:
            return True
        # Free capacity only changes at breakpoints: check the start and every breakpoint inside.
        times = [start] + [b for b in self._breaks if start < b < end]
        return all(covers(self.free_at(t), need) for t in times)

    def _free_from(self, start: int, need: Sequence[int]) -> bool:
        times = [start] + [b for b in self._breaks if b > start]
        return all(covers(self.free_at(t), need) for t in times)

    def earliest_start(self, need: Sequence[int], duration: int, not_before: int) -> int:
        """Earliest ``t >= max(not_before, now)`` with ``need`` free during ``[t, t + duration)``.

        A ``duration`` of 0 or less asks for ``need`` free forever from ``t`` on. Only times up to
        ``now + horizon`` are answered (any time when the horizon is 0).

        Parameters
        ----------
        need
            Capacity needed.
        duration
            Length of the interval (seconds).
        not_before
            Earliest acceptable start.

        Returns
        -------
        int
            The start time, or :data:`NEVER` (-1).
        """
        limit = self.now + self.horizon if self.horizon > 0 else math.inf
        not_before = max(not_before, self.now)
        # Starting later than not_before only helps right at a breakpoint.
        candidates = [not_before] + sorted(b for b in self._breaks if b > not_before)
        for t in candidates:
            if t > limit:
                break
            ok = self._free_from(t, need) if duration <= 0 else self.fits(t, t + duration, need)
            if ok:
                return t
        return NEVER


@dataclass(frozen=True)
class QuotaSpec:
    """A project's quota as the native queue holds it (the twin of ``cplat::QuotaSpec``).

    Parameters
    ----------
    cohort
        Cohort id; -1 borrows from and lends to nobody.
    nominal
        Guaranteed quota.
    borrowing_limit
        Most the project may use above ``nominal``.
    lending_limit
        Most of its unused nominal quota the rest of the cohort may borrow.
    """

    cohort: int
    nominal: Vec
    borrowing_limit: Vec
    lending_limit: Vec


def quota_specs(
    cohort: Sequence[int],
    nominal: Sequence[int],
    borrowing_limit: Sequence[int],
    lending_limit: Sequence[int],
) -> list[QuotaSpec]:
    """Build quota specs from the native queue's columns (as ``Quotas.arrays()`` returns them).

    Parameters
    ----------
    cohort
        Cohort id per project.
    nominal, borrowing_limit, lending_limit
        Flat (project x 3) limits, row-major.

    Returns
    -------
    list[QuotaSpec]
        One spec per project.
    """

    def row(v: Sequence[int], i: int) -> Vec:
        return (int(v[3 * i]), int(v[3 * i + 1]), int(v[3 * i + 2]))

    return [
        QuotaSpec(int(c), row(nominal, i), row(borrowing_limit, i), row(lending_limit, i))
        for i, c in enumerate(cohort)
    ]


def quota_admits(
    usage: Sequence[Sequence[int]], quotas: Sequence[QuotaSpec], project: int, need: Sequence[int]
) -> bool:
    """Return whether a job of ``project`` needing ``need`` is within its quota.

    Per dimension: the project's usage with the job may not pass ``nominal + borrowing_limit``;
    whatever it would then use above ``nominal`` is borrowed, and must fit in what the rest of
    its cohort can lend: each other member's unused nominal quota (capped by its lending
    limit), less what that member itself borrows.

    Parameters
    ----------
    usage
        Current usage of every project.
    quotas
        Quota of every project.
    project
        The job's project (-1: no quota, always admitted).
    need
        The job's total need.

    Returns
    -------
    bool
        ``True`` when the job is admitted.
    """
    if project < 0:
        return True
    q = quotas[project]
    use = usage[project]
    for d in range(3):
        if use[d] + need[d] > q.nominal[d] + q.borrowing_limit[d]:
            return False
        borrow = max(0, use[d] + need[d] - q.nominal[d])
        if borrow <= 0:
            continue
        if q.cohort < 0:
            return False
        pool = 0
        for k, other in enumerate(quotas):
            if k == project or other.cohort != q.cohort:
                continue
            unused = max(0, other.nominal[d] - usage[k][d])
            pool += min(other.lending_limit[d], unused)
            pool -= max(0, usage[k][d] - other.nominal[d])
        if borrow > pool:
            return False
    return True


def job_size(cpu_milli: int, num_gpu: int, gpu_milli: int, num_tasks: int) -> int:
    """Size by which lost work is weighted: GPU milli if the job uses GPUs, else milli-CPU.

    Parameters
    ----------
    cpu_milli, num_gpu, gpu_milli
        One task's request.
    num_tasks
        Tasks of the job.

    Returns
    -------
    int
        ``num_tasks`` times the task's milli-GPU (``num_gpu * gpu_milli``), or its milli-CPU (at
        least 1) for a job without GPUs.
    """
    per = num_gpu * gpu_milli if num_gpu > 0 and gpu_milli > 0 else max(cpu_milli, 1)
    return per * num_tasks


def lost_work(start: int, now: int, interval: int, cost: int, size: int) -> float:
    """Resource-seconds a job running since ``start`` loses if stopped at ``now``.

    Parameters
    ----------
    start
        When the job (this run of it) started.
    now
        When it would stop.
    interval, cost
        Checkpoint rhythm: a checkpoint after every ``interval`` seconds of work, taking
        ``cost`` seconds (``interval`` 0: never checkpoints).
    size
        The job's size (see :func:`job_size`).

    Returns
    -------
    float
        Seconds since the last completed checkpoint period, times ``size``.
    """
    elapsed = max(0, now - start)
    period = interval + cost if interval > 0 else 0
    since = elapsed % period if period > 0 else elapsed
    return float(since) * float(size)


def queue_key(
    order: str,
    submit: int,
    requested: int,
    width: int,
    priority: float,
    now: int,
    rlsched_wait: bool = False,
) -> float:
    """Sort key of a pending job (smaller goes first; ties by submit time, then job index).

    Parameters
    ----------
    order
        One of :data:`QUEUE_ORDERS`.
    submit
        Submit time.
    requested
        Requested run time (the native queue stores at least 1).
    width
        Number of tasks.
    priority
        Priority (higher first with the ``priority`` order).
    now
        Time of the cycle (WFP3 and UNICEP weigh the wait).
    rlsched_wait
        Use the RLScheduler evaluation code's wait ``-1 - submit`` instead of ``now - submit``.

    Returns
    -------
    float
        The key.

    Raises
    ------
    ValueError
        For an unknown order.
    """
    s = float(submit)
    r = float(max(requested, 1))
    n = float(width)
    wait = -1.0 - s if rlsched_wait else float(now) - s
    if order == "fcfs":
        return s
    if order == "sjf":
        return r
    if order == "priority":
        return -priority
    if order == "wfp3":
        return -math.pow(wait / r, 3.0) * n
    if order == "unicep":
        return -(wait + 1e-15) / (math.log2(n + 1e-15) * r)
    if order == "f1":
        return math.log10(r if r > 0 else 0.1) * n + 870.0 * math.log10(s if s > 0 else 0.1)
    raise ValueError(f"unknown queue order {order!r}")


@dataclass(frozen=True)
class RunningJob:
    """A running job as the victim choice sees it.

    Parameters
    ----------
    job
        Scheduler index.
    start
        When it started.
    need
        What it holds (all its tasks).
    priority
        Its priority.
    project
        Its project (-1: none).
    lost_work
        Work it would lose if stopped now (see :func:`lost_work`).
    terminating
        Already evicted and still checkpointing within its grace period.
    """

    job: int
    start: int
    need: Vec
    priority: float
    project: int
    lost_work: float
    terminating: bool = False


def _eligible_victims(
    running: Sequence[RunningJob],
    head_need: Sequence[int],
    head_priority: float,
    head_project: int,
    now: int,
    preemption: str,
    quotas: Sequence[QuotaSpec],
    usage: Sequence[Sequence[int]],
) -> list[RunningJob]:
    by_priority = preemption in ("priority", "both")
    by_reclaim = preemption in ("reclaim", "both")
    within = (
        by_reclaim
        and head_project >= 0
        and all(
            usage[head_project][d] + head_need[d] <= quotas[head_project].nominal[d]
            for d in range(3)
        )
    )
    out = []
    for r in running:
        if r.start == now or r.terminating:  # started by this very cycle, or leaving
            continue
        eligible = by_priority and r.priority < head_priority
        if not eligible and within:
            vp = r.project
            if (
                vp >= 0
                and vp != head_project
                and quotas[vp].cohort >= 0
                and quotas[vp].cohort == quotas[head_project].cohort
            ):
                eligible = any(usage[vp][d] > quotas[vp].nominal[d] for d in range(3))
        if eligible:
            out.append(r)
    return out


def choose_victims_aggregate(
    running: Sequence[RunningJob],
    head_need: Sequence[int],
    head_priority: float,
    head_project: int,
    free: Sequence[int],
    now: int,
    preemption: str,
    quotas: Sequence[QuotaSpec] = (),
    usage: Sequence[Sequence[int]] = (),
    grace_period: int = 0,
) -> list[int]:
    """Jobs to evict so that a blocked multi-task head fits in the aggregate free capacity.

    Eligible are running jobs not started at ``now`` that have a lower priority than the head
    (``priority``/``both``) or, when the head stays within its nominal quota
    (``reclaim``/``both``), jobs of another project of the head's cohort that borrows in some
    dimension. They are taken least lost work first (ties: latest start, then lowest index)
    until the head fits; then, from the last taken back, any victim the head does not need is
    dropped. Nothing is evicted when the head already fits or when all eligible jobs together
    do not make room, nor, with a grace period, when jobs already terminating will make room.
    Elastic jobs (which the native queue shrinks before evicting anyone) are not modelled.

    Parameters
    ----------
    running
        The running jobs.
    head_need, head_priority, head_project
        The blocked head: its total need, priority and project (-1: none).
    free
        Aggregate free capacity of the usable nodes.
    now
        Time of the cycle.
    preemption
        One of :data:`PREEMPTION_MODES`.
    quotas, usage
        Quota and current usage of every project (needed for reclaim).
    grace_period
        Seconds an evicted job keeps its resources (0: stopped at once).

    Returns
    -------
    list[int]
        Victims' indices, in the order they were chosen.
    """
    if preemption == "none":
        return []
    leaving: Vec = (0, 0, 0)
    for r in running:
        if r.terminating:
            leaving = _add(leaving, r.need)
    if grace_period > 0 and any(v > 0 for v in leaving) and covers(_add(free, leaving), head_need):
        return []
    if covers(free, head_need):
        return []
    candidates = _eligible_victims(
        running, head_need, head_priority, head_project, now, preemption, quotas, usage
    )
    candidates.sort(key=lambda r: (r.lost_work, -r.start, r.job))
    have: Vec = (free[0], free[1], free[2])
    victims: list[RunningJob] = []
    for r in candidates:
        if covers(have, head_need):
            break
        have = _add(have, r.need)
        victims.append(r)
    if not covers(have, head_need):
        return []
    for i in range(len(victims) - 1, -1, -1):
        without = _add(have, victims[i].need, -1)
        if covers(without, head_need):
            have = without
            del victims[i]
    return [r.job for r in victims]
