"""Reproduction of the RLScheduler paper's heuristic tables (Zhang et al., SC'20, Tables V/VI).

Protocol of the published evaluation: ten sequences of 1,024 consecutive jobs, each replayed on
an empty cluster of ``MaxNodes`` nodes; the table value is the mean over sequences of the mean
bounded slowdown (``max((wait + run) / max(run, 10), 1)``) and of the utilization
``sum(run x width) / ((last start - first submit) x MaxProcs)``. The sequences start at indices
drawn with numpy's legacy ``RandomState`` as gym (<= 0.21) seeds it for seed 1: the first 8
bytes of ``sha512(b"1")`` as two little-endian 32-bit words, ``randint(1024, len - 1025)``.

Scheduling as evaluated there: the chosen head job keeps its place until it starts
(``lock_head``); backfilling is the simplified EASY ``rlsched`` mode; WFP3 and UNICEP keys use
the evaluation code's wait (``-1 - submit``), which is what its published numbers reflect.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from cplat.profile import POLICIES
from cplat.scheduler import QueuePolicy, nodes_from_table
from cplat.sim.run import simulate
from cplat.traces.trace import Trace

SEQUENCE_LENGTH = 1024
SEQUENCES = 10
ORDERS = ("fcfs", "wfp3", "unicep", "sjf", "f1")

#: Published (bounded slowdown, utilization) by (trace stem, backfill) and order.
PUBLISHED: dict[tuple[str, bool], dict[str, tuple[float, float]]] = {
    ("lublin_256", False): {
        "fcfs": (7273.77, 0.657), "wfp3": (19753.53, 0.747), "unicep": (22274.74, 0.691),
        "sjf": (277.35, 0.762), "f1": (258.37, 0.816),
    },
    ("lublin_256", True): {
        "fcfs": (235.82, 0.868), "wfp3": (133.87, 0.864), "unicep": (307.23, 0.883),
        "sjf": (73.31, 0.778), "f1": (75.07, 0.840),
    },
    ("lublin_256_new2", False): {
        "fcfs": (7842.47, 0.404), "wfp3": (9523.18, 0.543), "unicep": (11265.31, 0.510),
        "sjf": (787.89, 0.562), "f1": (698.34, 0.478),
    },
    ("lublin_256_new2", True): {
        "fcfs": (247.61, 0.587), "wfp3": (318.35, 0.583), "unicep": (379.59, 0.587),
        "sjf": (91.99, 0.593), "f1": (148.25, 0.552),
    },
}  # fmt: skip


def sequence_starts(num_jobs: int, count: int = SEQUENCES, seed: int = 1) -> list[int]:
    """Start indices of the evaluation sequences (gym <= 0.21 seeding of numpy's RandomState)."""
    digest = hashlib.sha512(str(seed).encode()).digest()[:8]
    words = [int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:], "little")]
    rng = np.random.RandomState(words)
    return [int(rng.randint(SEQUENCE_LENGTH, num_jobs - SEQUENCE_LENGTH - 1)) for _ in range(count)]


@dataclass(frozen=True)
class SequenceResult:
    """One sequence's mean bounded slowdown and utilization."""

    start_index: int
    bounded_slowdown: float
    utilization: float


def queue_policy(order: str, backfill: bool) -> QueuePolicy:
    """Return the evaluation's scheduling rules for one heuristic."""
    return QueuePolicy(
        order=order,
        backfill="rlsched" if backfill else "none",
        lock_head=True,
        rlsched_wait=order in ("wfp3", "unicep"),
    )


def evaluate(trace: Trace, order: str, backfill: bool, starts: list[int]) -> list[SequenceResult]:
    """Replay each sequence with one heuristic; returns per-sequence results."""
    if trace.nodes is None:
        raise ValueError("the trace has no node list (SWF header without MaxNodes/MaxProcs)")
    nodes = nodes_from_table(trace.nodes)
    max_procs = int(nodes.cpu_milli.sum() // 1000)
    out = []
    for s in starts:
        jobs = trace.jobs.slice(s, SEQUENCE_LENGTH)
        res = simulate(
            jobs, nodes, placement=POLICIES["bestfit"], queue=queue_policy(order, backfill)
        )
        run = res.columns.duration.astype(np.float64)
        wait = (res.start - res.columns.submit).astype(np.float64)
        bsld = np.maximum((wait + run) / np.maximum(run, 10.0), 1.0)
        width = res.columns.num_tasks.astype(np.float64)
        window = float(res.start.max() - res.columns.submit[0])
        util = float((run * width).sum() / (window * max_procs)) if window > 0 else 1.0
        out.append(SequenceResult(s, float(bsld.mean()), util))
    return out
