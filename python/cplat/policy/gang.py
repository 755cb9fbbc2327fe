"""Topology-aware gang placement as a CP-SAT model (OR-Tools), with the native greedy as hint.

The decision is how many of the gang's identical tasks each node takes. Constraints: per-node
capacity for the task shape (counted by the engine from free CPU, memory and devices), all
tasks placed, and optionally the whole gang inside one rack or one spine. The objective is
lexicographic, encoded as a weighted sum: spines used, then racks used, then nodes left
partially used (a node that was busy before or takes part of the gang and still has room for
the shape afterwards). The engine's greedy answer (:meth:`cplat._core.Engine.place_gang_topology`)
is the solution hint and the fallback when the solver finds nothing better in its time limit,
so the result is never worse than the greedy one.

OR-Tools is optional: ``pip install 'cplat[policies]'``.

:class:`GangSolver` is the profile's choice (``gang_solver``, ``gang_time_limit`` in
``[placement]``); :func:`improve_started` applies it to the gangs one scheduling cycle started,
moving a gang to the solver's placement when that is strictly better than where the engine's
greedy put it. The scheduler that placed it (live service or simulator) is left consistent: the
gang is taken back and restored, all or nothing, on the better nodes or on its own.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from cplat import _core
from cplat.errors import InputError

if TYPE_CHECKING:
    from cplat.scheduler import Scheduler

__all__ = [
    "GANG_SOLVERS",
    "GangObjective",
    "GangPlan",
    "GangRequest",
    "GangSolver",
    "commit",
    "gang_objective",
    "greedy_gang",
    "improve_started",
    "solve_gang",
]

_UNBOUNDED = 2**31 - 1
#: Gang solvers a profile may name.
GANG_SOLVERS = ("greedy", "cp-sat")
#: Flag the engine's filter reads as "held for someone else's reservation".
_RESERVED_FLAG = 1 << 3


@dataclass(frozen=True)
class GangSolver:
    """How multi-task jobs (gangs) are placed.

    Parameters
    ----------
    solver
        ``greedy`` (the engine alone) or ``cp-sat`` (the engine places, then CP-SAT looks for
        a strictly better placement within ``time_limit`` and moves the gang there).
    time_limit
        CP-SAT wall-time limit per gang, seconds (0 < limit <= 60).
    workers
        CP-SAT search workers (1..64).
    cycle_budget
        Wall time all gangs of one cycle may spend in the solver, seconds; gangs beyond it
        keep the greedy placement.
    """

    solver: str = "greedy"
    time_limit: float = 1.0
    workers: int = 1
    cycle_budget: float = 5.0

    def __post_init__(self) -> None:
        if self.solver not in GANG_SOLVERS:
            raise InputError(
                f"unknown gang solver {self.solver!r} (valid: {', '.join(GANG_SOLVERS)})",
                field="gang_solver",
            )
        for name, value, top in (
            ("gang_time_limit", self.time_limit, 60.0),
            ("gang_cycle_budget", self.cycle_budget, 600.0),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 < value <= top
            ):
                raise InputError(f"{name} must be in (0, {top:g}] seconds", field=name)
        if (
            isinstance(self.workers, bool)
            or not isinstance(self.workers, int)
            or not (1 <= self.workers <= 64)
        ):
            raise InputError("gang_workers must be an integer in [1, 64]", field="gang_workers")
        if self.solver == "cp-sat" and importlib.util.find_spec("ortools") is None:
            raise InputError(
                "gang_solver cp-sat needs OR-Tools: pip install 'cplat[policies]'",
                field="gang_solver",
            )

    @property
    def active(self) -> bool:
        """Whether the solver does anything beyond the engine's greedy placement."""
        return self.solver == "cp-sat"


@dataclass(frozen=True)
class GangRequest:
    """``count`` identical tasks, each of this shape (integer units, see :mod:`cplat.model`)."""

    count: int
    cpu_milli: int
    memory_mib: int
    num_gpu: int = 0
    gpu_milli: int = 0
    models: int = 0

    @property
    def gpus_per_task(self) -> int:
        """Devices each task takes (0 for CPU-only tasks)."""
        return self.num_gpu if self.num_gpu > 0 and self.gpu_milli > 0 else 0

    def shape(self) -> tuple[int, int, int, int, int]:
        """Return ``(cpu_milli, memory_mib, num_gpu, gpu_milli, models)``."""
        return (self.cpu_milli, self.memory_mib, self.num_gpu, self.gpu_milli, self.models)


@dataclass(frozen=True, order=True)
class GangObjective:
    """Lexicographic placement cost: compared as ``(spines, racks, partial)``."""

    spines: int
    racks: int
    partial: int


@dataclass(frozen=True)
class GangPlan:
    """A gang placement (not committed).

    Attributes
    ----------
    code
        ``"ok"`` or the reason no placement exists (a native status code name).
    nodes
        One node per task (empty when not placed).
    objective
        Cost of ``nodes``; ``greedy`` the cost of the engine's greedy answer.
    optimal
        Whether ``objective`` is proven optimal.
    source
        ``"cpsat"`` when the solver improved on the greedy answer, else ``"greedy"``.
    seconds
        Wall time of the whole call.
    """

    code: str
    nodes: npt.NDArray[np.int32]
    objective: GangObjective | None
    greedy: GangObjective | None
    optimal: bool
    source: str
    seconds: float

    @property
    def ok(self) -> bool:
        """Whether a placement was found."""
        return self.code == "ok"


def _node_busy(state: _core.ClusterState) -> npt.NDArray[np.bool_]:
    gpu_used = np.concatenate(
        ([0], np.cumsum(1000 - state.gpu_free.astype(np.int64), dtype=np.int64))
    )
    begin = state.gpu_begin
    busy_gpu = gpu_used[begin[1:]] - gpu_used[begin[:-1]] > 0
    return np.asarray(
        (state.cpu_free != state.cpu_capacity)
        | (state.memory_free != state.memory_capacity)
        | busy_gpu
    )


def gang_objective(
    state: _core.ClusterState,
    request: GangRequest,
    nodes: npt.ArrayLike,
    *,
    capacity: npt.NDArray[np.int32] | None = None,
    busy: npt.NDArray[np.bool_] | None = None,
) -> GangObjective:
    """Cost of placing one task of ``request`` on each of ``nodes`` (state before placing).

    Parameters
    ----------
    state
        Cluster state before the gang is placed.
    request
        The gang.
    nodes
        One node per task.
    capacity, busy
        Precomputed tasks-of-this-shape per node and "node has allocations" (else computed).
    """
    ids = np.asarray(nodes, dtype=np.int32)
    spines, racks, _ = _core.gang_span(state, ids)
    cap = (
        capacity
        if capacity is not None
        else _core.gang_capacity(state, *request.shape(), _UNBOUNDED)
    )
    was_busy = busy if busy is not None else _node_busy(state)
    taken = np.bincount(ids, minlength=len(cap)) if len(ids) else np.zeros(len(cap), np.int64)
    candidate = cap > 0
    partial = candidate & (was_busy | (taken > 0)) & (taken < cap)
    return GangObjective(int(spines), int(racks), int(partial.sum()))


def greedy_gang(
    engine: _core.Engine, request: GangRequest, max_span: str = "none"
) -> tuple[str, npt.NDArray[np.int32]]:
    """Return the engine's topology-aware greedy placement without committing it.

    Returns
    -------
    tuple
        The status code name and one node per task (empty unless ``"ok"``).
    """
    status, nodes, gpus = engine.place_gang_topology(*request.shape(), request.count, max_span)
    if not status.ok:
        return status.code, np.zeros(0, dtype=np.int32)
    k = request.gpus_per_task
    for i, n in enumerate(nodes.tolist()):
        s = engine.release(
            n, request.cpu_milli, request.memory_mib, request.num_gpu, request.gpu_milli,
            gpus[i * k : (i + 1) * k].tolist(),
        )  # fmt: skip
        assert s.ok, s
    return "ok", np.asarray(nodes, dtype=np.int32)


def _import_cp_model() -> Any:
    try:
        from ortools.sat.python import cp_model
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the CP-SAT gang policy needs OR-Tools: pip install 'cplat[policies]' "
            "(or pip install 'ortools>=9.8')"
        ) from exc
    return cp_model


def solve_gang(
    state: _core.ClusterState,
    engine: _core.Engine,
    request: GangRequest,
    *,
    max_span: str = "none",
    time_limit: float = 1.0,
    workers: int = 8,
    seed: int = 0,
) -> GangPlan:
    """Place a gang optimally (within ``time_limit``) with CP-SAT; never worse than greedy.

    Parameters
    ----------
    state
        The cluster (``engine`` must work on it); nothing is committed.
    engine
        Engine used for the greedy hint and fallback.
    request
        The gang.
    max_span
        ``"none"``, ``"rack"`` or ``"spine"``: hard limit on the gang's span.
    time_limit
        Solver wall-time limit in seconds.
    workers
        CP-SAT search workers.
    seed
        Solver random seed.

    Returns
    -------
    GangPlan
        The best placement found and whether it is proven optimal.

    Raises
    ------
    ImportError
        When OR-Tools is not installed.
    ValueError
        For an unknown ``max_span`` or a non-positive ``count``.
    """
    t0 = time.perf_counter()
    if max_span not in ("none", "rack", "spine"):
        raise ValueError(f"unknown max_span {max_span!r} (valid: none, rack, spine)")
    if request.count < 1:
        raise ValueError("a gang needs at least one task")
    cp_model = _import_cp_model()
    cap_full = _core.gang_capacity(state, *request.shape(), _UNBOUNDED)
    busy = _node_busy(state)
    code, greedy_nodes = greedy_gang(engine, request, max_span)
    greedy_obj = (
        gang_objective(state, request, greedy_nodes, capacity=cap_full, busy=busy)
        if code == "ok"
        else None
    )
    if code not in ("ok", "topology_limit", "gang_incomplete"):
        # Not enough resources of some kind anywhere: no model can do better.
        return GangPlan(code, greedy_nodes, None, None, False, "greedy", time.perf_counter() - t0)

    cand = np.flatnonzero(cap_full > 0)
    node_rack, rack_spine = _core.topology_index(state)
    racks = node_rack[cand]
    rack_ids = np.unique(racks)
    spine_ids = np.unique(rack_spine[rack_ids])
    ub = np.minimum(cap_full[cand], request.count)

    model = cp_model.CpModel()
    x = [model.new_int_var(0, int(u), f"x{int(n)}") for n, u in zip(cand, ub, strict=True)]
    used = [model.new_bool_var(f"u{int(n)}") for n in cand]
    y = {int(r): model.new_bool_var(f"y{int(r)}") for r in rack_ids}
    z = {int(s): model.new_bool_var(f"z{int(s)}") for s in spine_ids}
    model.add(sum(x) == request.count)
    partial_terms: list[Any] = []
    constant = 0
    for i, n in enumerate(cand):
        model.add(x[i] >= 1).only_enforce_if(used[i])
        model.add(x[i] == 0).only_enforce_if(~used[i])
        r = int(node_rack[n])
        model.add_implication(used[i], y[r])
        full_possible = int(cap_full[n]) <= request.count
        if full_possible:
            f = model.new_bool_var(f"f{int(n)}")
            model.add(x[i] == int(cap_full[n])).only_enforce_if(f)
            model.add(x[i] <= int(cap_full[n]) - 1).only_enforce_if(~f)
            if busy[n]:
                constant += 1
                partial_terms.append(-f)
            else:
                partial_terms.append(used[i] - f)
        elif busy[n]:
            constant += 1  # stays partially used whatever the gang does
        else:
            partial_terms.append(used[i])
    for r in rack_ids:
        model.add_implication(y[int(r)], z[int(rack_spine[r])])
    if max_span == "rack":
        model.add(sum(y.values()) <= 1)
    elif max_span == "spine":
        model.add(sum(z.values()) <= 1)
    w_rack = len(cand) + 1
    w_spine = w_rack * (len(rack_ids) + 1)
    model.minimize(w_spine * sum(z.values()) + w_rack * sum(y.values()) + sum(partial_terms))

    if code == "ok":
        taken = np.bincount(greedy_nodes, minlength=len(cap_full))
        for i, n in enumerate(cand):
            model.add_hint(x[i], int(taken[n]))
            model.add_hint(used[i], bool(taken[n] > 0))

    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = float(time_limit)
    solver.parameters.num_search_workers = int(workers)
    solver.parameters.random_seed = int(seed)
    result = solver.solve(model)
    found = result in (cp_model.OPTIMAL, cp_model.FEASIBLE)
    proven = result == cp_model.OPTIMAL
    if found:
        counts = np.array([solver.value(v) for v in x], dtype=np.int64)
        sat_nodes = np.repeat(cand, counts).astype(np.int32)
        sat_obj = gang_objective(state, request, sat_nodes, capacity=cap_full, busy=busy)
        if greedy_obj is None or sat_obj < greedy_obj:
            return GangPlan("ok", sat_nodes, sat_obj, greedy_obj, proven, "cpsat",
                            time.perf_counter() - t0)  # fmt: skip
        return GangPlan("ok", greedy_nodes, greedy_obj, greedy_obj, proven, "greedy",
                        time.perf_counter() - t0)  # fmt: skip
    if greedy_obj is not None:
        return GangPlan("ok", greedy_nodes, greedy_obj, greedy_obj, False, "greedy",
                        time.perf_counter() - t0)  # fmt: skip
    # Infeasible (proven) or nothing found: report the greedy's reason.
    return GangPlan(code, greedy_nodes, None, None, result == cp_model.INFEASIBLE, "greedy",
                    time.perf_counter() - t0)  # fmt: skip


def commit(
    engine: _core.Engine, request: GangRequest, plan: GangPlan
) -> tuple[_core.Status, npt.NDArray[np.int32]]:
    """Commit a plan all or nothing; returns the status and the devices of every task."""
    return engine.place_gang_on(*request.shape(), plan.nodes)


def improve_started(
    sched: Scheduler,
    started: Sequence[int],
    requests: Sequence[GangRequest],
    now: int,
    solver: GangSolver,
    *,
    max_span: str = "none",
    forbidden: Sequence[Sequence[int]] | None = None,
    seed: int = 0,
) -> list[tuple[int, GangPlan]]:
    """Move gangs the last cycle started to CP-SAT's placement where it is strictly better.

    Each gang is taken back (:meth:`~cplat.scheduler.Scheduler.requeue`), solved on the
    cluster without it (:func:`solve_gang`: the topology-aware greedy as hint and fallback,
    then CP-SAT), and restored (:meth:`~cplat.scheduler.Scheduler.restore`) on the plan's
    nodes when their cost (:class:`GangObjective`) is lower than that of the placement the
    cycle chose, else where it was. The engine
    chooses the devices on the new nodes (NVLink islands first). A queue-sort plugin sees a
    stop and a start at ``now``, which leaves its usage unchanged.

    Parameters
    ----------
    sched
        The scheduler whose cycle started the jobs.
    started
        Scheduler indices of running gangs to consider (jobs with fewer than two tasks now
        are skipped).
    requests
        The task shape of each (``count`` is ignored: the job's current task count is used).
    now
        The cycle's time.
    solver
        The profile's gang solver; nothing happens unless it is active.
    max_span
        The queue's span limit.
    forbidden
        Per gang, nodes it may not use (other projects' reservations it would overlap).
    seed
        Solver seed.

    Returns
    -------
    list of tuple
        ``(job, plan)`` for every gang moved.
    """
    moved: list[tuple[int, GangPlan]] = []
    if not solver.active:
        return moved
    spent = 0.0
    state, engine = sched.state, sched.engine
    for i, job in enumerate(started):
        if spent >= solver.cycle_budget:
            break
        job = int(job)
        if sched.job_state(job) != "running" or sched.terminating(job):
            continue
        count = sched.tasks_of(job)
        if count < 2:
            continue
        req = requests[i]
        request = GangRequest(count, req.cpu_milli, req.memory_mib, req.num_gpu, req.gpu_milli,
                              req.models)  # fmt: skip
        nodes0, gpus0 = sched.placement_of(job)
        start = sched.start_time(job)
        if not sched.requeue(job, now):
            continue
        # The engine's own placement, judged on the cluster without the gang.
        current = gang_objective(state, request, nodes0)
        masked = [n for n in (forbidden[i] if forbidden else ()) if 0 <= n < state.num_nodes]
        old_flags = {n: int(state.flags[n]) for n in masked}
        for n, f in old_flags.items():
            state.set_flags(n, f | _RESERVED_FLAG)
        try:
            left = max(0.05, min(solver.time_limit, solver.cycle_budget - spent))
            plan = solve_gang(state, engine, request, max_span=max_span, time_limit=left,
                              workers=solver.workers, seed=seed)  # fmt: skip
            spent += plan.seconds
            better = plan.ok and plan.objective is not None and plan.objective < current
            gpus = np.zeros(0, dtype=np.int32)
            if better:
                status, gpus = commit(engine, request, plan)
                better = status.ok
                if better:
                    _release(engine, request, plan.nodes, gpus)
        finally:
            for n, f in old_flags.items():
                state.set_flags(n, f)
        if better and sched.restore(job, now, plan.nodes, gpus) == "ok":
            moved.append((job, plan))
            continue
        code = sched.restore(job, start, nodes0, gpus0)
        if code != "ok":  # pragma: no cover - the resources were just released
            raise RuntimeError(f"gang {job} could not be put back ({code})")
    return moved


def _release(
    engine: _core.Engine,
    request: GangRequest,
    nodes: npt.NDArray[np.int32],
    gpus: npt.NDArray[np.int32],
) -> None:
    k = request.gpus_per_task if request.gpu_milli >= 1000 else (1 if request.num_gpu else 0)
    for i, n in enumerate(nodes.tolist()):
        s = engine.release(
            n, request.cpu_milli, request.memory_mib, request.num_gpu, request.gpu_milli,
            gpus[i * k : (i + 1) * k].tolist(),
        )  # fmt: skip
        assert s.ok, s
