"""Static packing experiment (the FGD paper's protocol).

Per run: seed a generator; sort the tasks by name and shuffle them; tune the list so that the
total requested GPU reaches ``tune`` x cluster GPU capacity (append random copies of tasks, or
drop random tasks when there is too much); then place the tasks one by one, never releasing
any. A task that fits nowhere fails and is dropped. After every task the cluster's allocated
GPU and fragmentation are recorded against the *arrived* workload (GPU requested so far, as a
percentage of capacity), and discretised into the columns ``0..130`` of the published results.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cplat.cluster import new_engine, new_state
from cplat.fragmentation import TargetWorkload, target_workload
from cplat.model import MILLI_GPU, NodeTable, TaskTable
from cplat.profile import Profile

#: Columns of the discretised curves: arrived workload 0..130 % of GPU capacity.
ARRIVED_COLUMNS = tuple(range(131))

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class PackRun:
    """Outcome of one static-packing run (one policy, one seed)."""

    workload: str
    policy: Profile
    tune: float
    seed: int
    total_gpus: int
    arrived_milli: npt.NDArray[np.int64]  # cumulative requested milli-GPU after each task
    allocated_milli: npt.NDArray[np.int64]  # allocated milli-GPU after each task
    frag_milli: F64  # fragmented milli-GPU after each task
    placed: npt.NDArray[np.bool_]

    @property
    def capacity_milli(self) -> int:
        """Cluster GPU capacity in milli-GPU."""
        return self.total_gpus * MILLI_GPU

    @property
    def failed(self) -> int:
        """Tasks that fit nowhere, over the whole run (up to ``tune`` x capacity)."""
        return int((~self.placed).sum())

    def failed_by(self, column: int) -> int:
        """Tasks that fit nowhere among those arrived by ``column`` % of GPU capacity.

        Uses the same rounding as the curves, so it counts the failures behind a column's
        allocation figure.
        """
        return int((~self.placed[self._arrived_pct() <= column]).sum())

    def allocation_curve(self) -> F64:
        """Allocated GPU (% of capacity) per arrived-workload column; NaN where no step."""
        alloc = np.round(self.allocated_milli / self.total_gpus / 10, 2)
        return discretize(self._arrived_pct(), alloc)

    def fragmentation_curve(self) -> F64:
        """Fragmented GPU (% of capacity) per arrived-workload column."""
        curve = discretize(self._arrived_pct(), self.frag_milli, round_mean=False)
        return np.round(100 * curve / 1000 / self.total_gpus, 2)

    def fragmentation_ratio_curve(self) -> F64:
        """Fragmented GPU (% of idle GPU) per arrived-workload column."""
        idle = (self.capacity_milli - self.allocated_milli).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(idle > 0, 100 * self.frag_milli / idle, np.nan)
        return discretize(self._arrived_pct(), ratio)

    def _arrived_pct(self) -> npt.NDArray[np.int64]:
        # Round half to even, as the published analysis did.
        return np.rint(self.arrived_milli / self.total_gpus / 10).astype(np.int64)


def discretize(arrived_pct: npt.NDArray[np.int64], values: F64, *, round_mean: bool = True) -> F64:
    """Mean of ``values`` per arrived column 0..130 (neighbours ±1 when a column is empty)."""
    n = len(ARRIVED_COLUMNS)
    valid = ~np.isnan(values)
    idx = np.clip(arrived_pct, -1, n + 1) + 1  # shift so -1 is a bin
    sums = np.bincount(idx[valid], weights=values[valid], minlength=n + 3)
    counts = np.bincount(idx[valid], minlength=n + 3).astype(np.float64)
    out = np.full(n, np.nan)
    for k in ARRIVED_COLUMNS:
        b = k + 1
        if counts[b] > 0:
            out[k] = sums[b] / counts[b]
        else:
            c = counts[b - 1 : b + 2].sum()
            if c > 0:
                out[k] = sums[b - 1 : b + 2].sum() / c
    return np.round(out, 2) if round_mean else out


def tuned_order(
    tasks: TaskTable, capacity_milli: int, tune: float, rng: np.random.Generator
) -> npt.NDArray[np.intp]:
    """Task indices in placement order: name-sorted, shuffled, then tuned to ``tune`` x capacity.

    Tuning up appends random copies (drawn from the name-sorted list) while the next copy keeps
    the total within the target; the stop test adds the copy's per-device share, as the
    published protocol does. Tuning down drops random tasks until the total is within target.
    """
    by_name = np.asarray(sorted(range(len(tasks)), key=tasks.name.__getitem__), dtype=np.intp)
    order = by_name[rng.permutation(len(by_name))]
    per_task = tasks.total_gpu_milli
    total = int(per_task.sum())
    target = tune * capacity_milli
    if tune <= 0 or total == target:
        return order
    if total > target:
        kept = list(order)
        while total > target and kept:
            victim = kept.pop(int(rng.integers(len(kept))))
            total -= int(per_task[victim])
        return np.asarray(kept, dtype=np.intp)
    extra: list[int] = []
    milli = tasks.gpu_milli
    while True:
        pick = int(by_name[int(rng.integers(len(by_name)))])
        if total + int(milli[pick]) > target:
            break
        total += int(per_task[pick])
        extra.append(pick)
    return np.concatenate([order, np.asarray(extra, dtype=np.intp)])


def run_pack(
    nodes: NodeTable,
    tasks: TaskTable,
    profile: Profile,
    seed: int,
    tune: float,
    *,
    workload_name: str,
    target: TargetWorkload | None = None,
) -> PackRun:
    """Run one static-packing experiment.

    ``target`` is the fragmentation target workload; derived from ``tasks`` when omitted.
    """
    target = target if target is not None else target_workload(tasks)
    rng = np.random.Generator(np.random.PCG64(seed))
    order = tuned_order(tasks, nodes.total_gpu_milli, tune, rng)
    seq = tasks.take(order)
    state = new_state(nodes)
    engine = new_engine(state, profile, seed, target)
    out = engine.place_batch(
        seq.cpu_milli, seq.memory_mib, seq.num_gpu, seq.gpu_milli, seq.models, track=True
    )
    return PackRun(
        workload=workload_name,
        policy=profile,
        tune=tune,
        seed=seed,
        total_gpus=int(nodes.num_gpu.sum()),
        arrived_milli=np.cumsum(seq.total_gpu_milli),
        allocated_milli=np.asarray(out["allocated_gpu_milli"], dtype=np.int64),
        frag_milli=np.asarray(out["frag_milli"], dtype=np.float64),
        placed=np.asarray(out["node"], dtype=np.int32) >= 0,
    )


def run_many(
    nodes: NodeTable,
    tasks: TaskTable,
    profiles: Sequence[Profile],
    seeds: Sequence[int],
    tune: float,
    *,
    workload_name: str,
    jobs: int | None = None,
) -> list[PackRun]:
    """Run every (profile, seed) pair on one parsed trace, in parallel threads.

    The engine releases the GIL while placing, so threads use all cores.
    """
    target = target_workload(tasks)
    pairs = [(p, s) for p in profiles for s in seeds]
    workers = max(1, min(jobs or os.cpu_count() or 1, len(pairs)))

    def one(pair: tuple[Profile, int]) -> PackRun:
        return run_pack(
            nodes, tasks, pair[0], pair[1], tune, workload_name=workload_name, target=target
        )

    if workers == 1:
        return [one(p) for p in pairs]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, pairs))


def _fmt(value: float) -> str:
    return "" if np.isnan(value) else repr(float(value))


def result_rows(runs: Sequence[PackRun], kind: str) -> list[list[str]]:
    """CSV rows (header first) in the published format.

    ``kind`` is ``alloc`` (``workload,sc_policy,tune,seed,total_gpus,0..130``), ``frag`` or
    ``frag_ratio`` (``workload,sc_policy,tune,seed,0..130``).
    """
    head = ["workload", "sc_policy", "tune", "seed"]
    if kind == "alloc":
        head.append("total_gpus")
    rows = [head + [str(c) for c in ARRIVED_COLUMNS]]
    for run in runs:
        if kind == "alloc":
            curve = run.allocation_curve()
        elif kind == "frag":
            curve = run.fragmentation_curve()
        elif kind == "frag_ratio":
            curve = run.fragmentation_ratio_curve()
        else:
            raise ValueError(f"unknown result kind {kind!r}")
        row = [run.workload, run.policy.label, repr(run.tune), str(run.seed)]
        if kind == "alloc":
            row.append(str(run.total_gpus))
        rows.append(row + [_fmt(v) for v in curve])
    return rows
