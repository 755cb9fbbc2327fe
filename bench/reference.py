"""Fixed naive baselines that the benchmark suite times in the same process as the code.

A benchmark's gated figure is ``baseline seconds / subject seconds``: how many times faster
than a fixed naive implementation cplat runs on this machine, now. Both share the machine's
speed and whatever else is running, so the ratio is far steadier on a noisy 2-core VM than
either time. The baselines never change with cplat's code (that is what makes a drop in the
ratio a regression of cplat):

- ``reference_bestfit``: best-fit placement as a numpy loop (one vectorised scan of the nodes
  per task), the baseline of the engine and gang figures;
- ``reference_fcfs``: FCFS without backfilling as a pure-Python event loop, the baseline of the
  simulator, policy and live-cluster figures (interpreted Python work);
- ``sqlite_commits``: one durable sqlite3 insert and commit at a time, recorded beside the
  store's figure (reported only: the disk's flush time swings it several-fold between runs).
"""

from __future__ import annotations

import heapq
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cplat.model import NodeTable, TaskTable


def reference_bestfit(nodes: NodeTable, tasks: TaskTable) -> int:
    """Place ``tasks`` one by one on the node leaving the least CPU and GPU free.

    Returns the number placed. Whole-GPU tasks take fully free GPUs, fractional ones the
    fullest GPU they fit on; a task's model mask (0 = any) restricts the nodes.
    """
    g = max(int(nodes.num_gpu.max(initial=0)), 1)
    cpu = nodes.cpu_milli.astype(np.int64)
    mem = nodes.memory_mib.astype(np.int64)
    gpu = np.where(np.arange(g)[None, :] < nodes.num_gpu[:, None], 1000, 0).astype(np.int64)
    maxfree = gpu.max(axis=1)
    whole = (gpu == 1000).sum(axis=1)
    gfree = gpu.sum(axis=1)
    model_bit = np.where(
        nodes.gpu_model >= 0,
        np.left_shift(np.uint64(1), np.maximum(nodes.gpu_model, 0).astype(np.uint64)),
        np.uint64(0),
    )
    cpu_cap = float(max(int(cpu.max(initial=1)), 1))
    gpu_cap = 1000.0 * g
    placed = 0
    for c, m, k, milli, mask in zip(
        tasks.cpu_milli.tolist(),
        tasks.memory_mib.tolist(),
        tasks.num_gpu.tolist(),
        tasks.gpu_milli.tolist(),
        tasks.models.tolist(),
        strict=True,
    ):
        ok = (cpu >= c) & (mem >= m)
        if k == 1:
            ok &= maxfree >= milli
        elif k > 1:
            ok &= whole >= k
        if k and mask:
            ok &= (model_bit & np.uint64(mask)) != 0
        idx = np.flatnonzero(ok)
        if idx.size == 0:
            continue
        left = (cpu[idx] - c) / cpu_cap + (gfree[idx] - k * milli) / gpu_cap
        j = int(idx[np.argmin(left)])
        cpu[j] -= c
        mem[j] -= m
        row = gpu[j]
        if k == 1:
            fits = np.flatnonzero(row >= milli)
            row[fits[np.argmin(row[fits])]] -= milli
        elif k > 1:
            row[np.flatnonzero(row == 1000)[:k]] = 0
        maxfree[j] = row.max()
        whole[j] = int((row == 1000).sum())
        gfree[j] = row.sum()
        placed += 1
    return placed


def reference_fcfs(submit: list[int], duration: list[int], size: list[int], total: int) -> int:
    """Replay jobs first come, first served, without backfilling; return the makespan.

    ``submit`` is sorted; a job needs ``size`` of the ``total`` identical nodes.
    """
    free = total
    ends: list[tuple[int, int]] = []
    queue: deque[int] = deque()
    now = 0
    i = 0
    n = len(submit)
    while i < n or queue:
        if queue and min(size[queue[0]], total) <= free:
            j = queue.popleft()
            s = min(size[j], total)
            free -= s
            heapq.heappush(ends, (now + duration[j], s))
            continue
        arrival = submit[i] if i < n else None
        if ends and (arrival is None or ends[0][0] < arrival):
            now, s = heapq.heappop(ends)
            free += s
        else:
            assert arrival is not None
            now = max(now, arrival)
            queue.append(i)
            i += 1
    while ends:
        now = heapq.heappop(ends)[0]
    return now


def lublin_columns(jobs: int, nodes: int, seed: int = 1) -> tuple[list[int], ...]:
    """``(submit, duration, size)`` of a Lublin-Feitelson workload as Python lists."""
    from cplat.workload import lublin_feitelson

    t = lublin_feitelson(jobs, nodes=nodes, seed=seed)
    return (
        t.column("submit_time").to_pylist(),
        t.column("duration").to_pylist(),
        t.column("num_tasks").to_pylist(),
    )


def fixed_python_baseline(jobs: int = 20_000, nodes: int = 1024) -> Callable[[], None]:
    """The fixed interpreted-Python baseline: FCFS over ``jobs`` Lublin-Feitelson jobs."""
    submit, duration, size = lublin_columns(jobs, nodes)

    def run() -> None:
        reference_fcfs(submit, duration, size, nodes)

    return run


def sqlite_commits(path: Path, calls: int) -> float:
    """Seconds for ``calls`` inserts, each its own durable commit (WAL, synchronous=FULL)."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY, spec TEXT)")
        payload = '{"tasks": {"count": 1, "resources": {"cpu_milli": 1000}}}'
        t0 = time.perf_counter()
        for _ in range(calls):
            db.execute("BEGIN")
            db.execute("INSERT INTO jobs (spec) VALUES (?)", (payload,))
            db.execute("COMMIT")
        return time.perf_counter() - t0
    finally:
        db.close()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(f"{path}{suffix}"):
                os.unlink(f"{path}{suffix}")


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
