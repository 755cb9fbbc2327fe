"""The deep-queue trace and exact replays on it.

``GOLDEN`` holds a digest of the start times that the calendar-based engine (before the
incremental EASY and the native replay loop) gave on small seeded traces: whatever path a
replay takes now, the start times must not move.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from cplat.model import GpuModels, NodeTable
from cplat.profile import POLICIES
from cplat.scheduler import SLURM_BACKFILL, Checkpointing, QueuePolicy, nodes_from_table
from cplat.sim.run import SimResult, simulate
from cplat.traces.deep_queue import deep_queue_nodes, deep_queue_trace
from cplat.traces.schema import JOB_SCHEMA
from cplat.workload import lublin_feitelson, synthetic_cluster_nodes

GOLDEN: list[tuple[str, int, dict[str, Any], str]] = [
    ("deep", 0, {"order": "fcfs", "backfill": "none"}, "c4803793453f6d17"),
    ("deep", 0, {"order": "fcfs", "backfill": "easy"}, "9590eb6be3182868"),
    ("deep", 1, {"order": "fcfs", "backfill": "easy"}, "afdd6846fc4f0f70"),
    ("deep", 0, {"order": "sjf", "backfill": "easy"}, "aed8bbefb9308428"),
    ("deep", 0, {"order": "fcfs", "backfill": "easy", "max_backfill_jobs": 20}, "dda4a0cff0f05756"),
    (
        "deep",
        0,
        {"order": "fcfs", "backfill": "easy", "calendar_resolution": 300},
        "4d9c7549cdeae013",
    ),
    (
        "deep",
        0,
        {"order": "fcfs", "backfill": "easy", "calendar_horizon": 3600},
        "8a6de82fefaf9eef",
    ),
    ("deep", 0, {"order": "fcfs", "backfill": "conservative"}, "ea4a1c0f59731f58"),
    (
        "deep",
        1,
        {
            "order": "fcfs",
            "backfill": "conservative",
            "calendar_resolution": 60,
            "calendar_horizon": 86400,
            "max_backfill_jobs": 50,
        },
        "c56fe0b028b38444",
    ),
    ("lf", 2, {"order": "fcfs", "backfill": "easy"}, "9f1333f1f10764a9"),
    ("lf", 2, {"order": "fcfs", "backfill": "conservative"}, "047be0edc23a2ea3"),
]


def _trace(kind: str, seed: int) -> tuple[pa.Table, Any]:
    if kind == "deep":
        return deep_queue_trace(3000, nodes=64, seed=seed), nodes_from_table(deep_queue_nodes(64))
    jobs = lublin_feitelson(3000, nodes=128, seed=seed, estimate="overestimate")
    return jobs, nodes_from_table(synthetic_cluster_nodes(128))


def _digest(start: np.ndarray[Any, Any]) -> str:
    return hashlib.sha256(np.ascontiguousarray(start, dtype=np.int64).tobytes()).hexdigest()[:16]


@pytest.mark.parametrize(("kind", "seed", "policy", "digest"), GOLDEN)
def test_start_times_unchanged(kind: str, seed: int, policy: dict[str, Any], digest: str) -> None:
    jobs, nodes = _trace(kind, seed)
    res = simulate(jobs, nodes, queue=QueuePolicy(**policy))
    assert (res.end >= 0).all()
    assert _digest(res.start) == digest


def test_trace_shape() -> None:
    jobs = deep_queue_trace(20_000, seed=3)
    assert jobs.schema.equals(JOB_SCHEMA)
    assert jobs.equals(deep_queue_trace(20_000, seed=3))
    submit = jobs.column("submit_time").to_numpy()
    dur = jobs.column("duration").to_numpy()
    req = jobs.column("requested_time").to_numpy()
    size = jobs.column("num_tasks").to_numpy()
    assert submit[0] == 0 and (np.diff(submit) >= 0).all()
    assert (req >= dur).all() and (dur >= 1).all()
    assert (req > 5 * dur).mean() > 0.5  # inaccurate estimates
    assert size.max() <= 8192 // 4 and (size == 1).mean() > 0.3
    load = float((dur * size).sum()) / (8192 * float(submit[-1]))
    assert 0.85 < load < 1.2
    assert deep_queue_trace(0).num_rows == 0
    with pytest.raises(ValueError):
        deep_queue_trace(10, load=0.0)


def _same(a: SimResult, b: SimResult) -> None:
    assert a.jobs.equals(b.jobs)
    assert np.array_equal(a.start, b.start) and np.array_equal(a.end, b.end)
    assert np.array_equal(a.reservation, b.reservation)
    assert (a.events, a.cycles) == (b.events, b.cycles)
    assert np.array_equal(a.gpu_series, b.gpu_series)


@pytest.mark.parametrize(
    "policy",
    [
        QueuePolicy("fcfs", "none"),
        QueuePolicy("fcfs", "easy"),
        QueuePolicy("sjf", "easy", max_backfill_jobs=10),
        QueuePolicy("fcfs", "conservative", calendar_resolution=60),
        QueuePolicy("f1", "rlsched"),
    ],
    ids=lambda p: p.name,
)
def test_native_loop_matches_the_python_loop(policy: QueuePolicy) -> None:
    jobs, nodes = _trace("deep", 4)
    calls: list[tuple[int, int]] = []
    fast = simulate(jobs, nodes, queue=policy, progress=lambda d, t: calls.append((d, t)))
    slow = simulate(jobs, nodes, queue=policy, native=False)
    _same(fast, slow)
    assert calls[-1] == (len(jobs), len(jobs))


def test_native_loop_with_reservations_checkpoints_exclusive_and_horizon() -> None:
    jobs = lublin_feitelson(800, nodes=32, seed=5, estimate="overestimate")
    nodes = nodes_from_table(synthetic_cluster_nodes(32))
    exclusive = np.arange(800) % 7 == 0
    kwargs: dict[str, Any] = {
        "queue": QueuePolicy("fcfs", "easy"),
        "reservations": [(5_000, 20_000, [0, 1, 2, 3], ""), (50_000, 60_000, [4, 5], "")],
        "checkpoint": Checkpointing(600, 30),
        "exclusive": exclusive,
    }
    _same(simulate(jobs, nodes, **kwargs), simulate(jobs, nodes, native=False, **kwargs))
    stop = int(jobs.column("submit_time").to_numpy()[400])
    a = simulate(jobs, nodes, horizon=stop, **kwargs)
    _same(a, simulate(jobs, nodes, horizon=stop, native=False, **kwargs))
    assert (a.end < 0).any()


def test_native_loop_on_gpus_records_the_same_series() -> None:
    n = 16
    nodes = NodeTable(
        name=tuple(f"g{i}" for i in range(n)),
        cpu_milli=np.full(n, 64_000, dtype=np.int64),
        memory_mib=np.full(n, 256_000, dtype=np.int64),
        num_gpu=np.full(n, 8, dtype=np.int32),
        gpu_model=np.zeros(n, dtype=np.int32),
        models=GpuModels(("A100",)),
    )
    rng = np.random.default_rng(7)
    m = 600
    dur = rng.integers(10, 5_000, m)
    jobs = pa.table(
        {
            "job_id": np.arange(m, dtype=np.int64),
            "submit_time": np.sort(rng.integers(0, 40_000, m)),
            "duration": dur,
            "requested_time": dur * 3,
            "num_tasks": rng.integers(1, 4, m).astype(np.int32),
            "cpu_milli": np.full(m, 4_000, dtype=np.int64),
            "memory_mib": np.full(m, 1_000, dtype=np.int64),
            "num_gpu": rng.integers(1, 3, m).astype(np.int32),
            "gpu_milli": np.where(rng.random(m) < 0.3, 500, 1000).astype(np.int32),
            "gpu_models": [""] * m,
            "user": ["u"] * m,
            "group": ["g"] * m,
            "priority": np.zeros(m, dtype=np.int32),
            "queue": ["q"] * m,
        },
        schema=JOB_SCHEMA,
    )
    policy = QueuePolicy("fcfs", "easy")
    fast = simulate(jobs, nodes, placement=POLICIES["fgd"], queue=policy)
    _same(fast, simulate(jobs, nodes, placement=POLICIES["fgd"], queue=policy, native=False))
    assert len(fast.gpu_series) == fast.cycles


def test_native_refuses_what_it_cannot_replay() -> None:
    jobs, nodes = _trace("deep", 0)
    with pytest.raises(ValueError, match="native"):
        simulate(jobs, nodes, tick=60, native=True)


def _peak_cores(res: SimResult) -> int:
    size = res.columns.num_tasks.astype(np.int64)
    times = np.concatenate([res.end, res.start])
    delta = np.concatenate([-size, size])  # at equal times ends come first
    order = np.lexsort((delta, times))
    return int(np.cumsum(delta[order]).max())


@pytest.mark.parametrize("backfill", ["easy", "conservative"])
def test_slurm_like_bounds_run_the_same_in_both_loops(backfill: str) -> None:
    jobs, nodes = _trace("deep", 6)
    policy = QueuePolicy("fcfs", backfill, **SLURM_BACKFILL)
    fast = simulate(jobs, nodes, queue=policy)
    _same(fast, simulate(jobs, nodes, queue=policy, native=False))
    assert (fast.end >= 0).all()
    assert _peak_cores(fast) <= 64 * 8
    # Reservations are never in the past and lie within the window.
    planned = fast.reservation >= 0
    assert planned.any()
    assert (fast.reservation[planned] >= fast.columns.submit[planned]).all()


def test_backfill_interval() -> None:
    jobs, nodes = _trace("deep", 7)
    for backfill in ("easy", "conservative"):
        every = simulate(jobs, nodes, queue=QueuePolicy("fcfs", backfill))
        # Integer times: a pass at most once a second is a pass every cycle.
        same = simulate(jobs, nodes, queue=QueuePolicy("fcfs", backfill, backfill_interval=1))
        assert np.array_equal(every.start, same.start)
        rare = simulate(jobs, nodes, queue=QueuePolicy("fcfs", backfill, backfill_interval=3600))
        assert (rare.end >= 0).all() and _peak_cores(rare) <= 64 * 8
        assert not np.array_equal(every.start, rare.start)


def test_bounded_conservative_window_limit() -> None:
    nodes = nodes_from_table(deep_queue_nodes(4))
    with pytest.raises(ValueError, match="slots"):
        simulate(
            deep_queue_trace(10, nodes=4),
            nodes,
            queue=QueuePolicy("fcfs", "conservative", calendar_horizon=2**21),
        )
