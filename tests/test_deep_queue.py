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

from cplat.scheduler import QueuePolicy, nodes_from_table
from cplat.sim.run import simulate
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
