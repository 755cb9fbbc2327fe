"""A generated deep-queue trace shaped like RICC-2010-2 (Parallel Workloads Archive).

RICC (RIKEN Integrated Cluster of Clusters, May-Sep 2010) logged 447,794 jobs on 1,024 nodes
of 8 cores, heavily loaded, with about 1,800 jobs waiting on average. Its log needs a
download; this generator gives the benchmarks and CI a trace of the same shape, seeded and
built with numpy in well under a second:

- **machine**: ``nodes`` x ``cores_per_node`` processors (1,024 x 8 = 8,192), one task per
  processor (``cpu_milli = 1000``, no memory, no GPUs) as the SWF reader maps a log;
- **sizes** (processors): 40 % serial, 10 % 2-4, 28 % one node (8), 16 % 16-64, 5 % 128-512
  and 1 % 1,024-2,048 (a quarter of the machine at most);
- **run times**: log-normal (median about 10 minutes, heavy tail) cut to [1 s, 72 h], with
  one job in ten failing within its first minute;
- **estimates** are inaccurate as users' are: the smallest of the site's limits (10 min, 1 h,
  4 h, 12 h, 24 h, 72 h) above the run time, moved up one to three limits for three jobs in
  five, so that for many jobs the requested time is many times the actual one;
- **arrivals**: bursts (job arrays: a geometric number of jobs of one shape submitted a few
  seconds apart, mean 16) arriving as a Poisson process with a strong daily cycle, spaced so
  that the offered load (processor-seconds over capacity-seconds) is ``load`` (default
  0.95): with the daily peaks far above capacity the queue is hundreds to thousands of jobs
  deep (FCFS+EASY on the first 60,000 jobs: about 700 waiting on average; plain FCFS: more
  than 2,000).

A smaller ``num_jobs`` gives a shorter trace of the same shape (the quick benchmarks use one).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from cplat.traces.schema import JOB_SCHEMA
from cplat.workload import synthetic_cluster_nodes

__all__ = ["RICC_JOBS", "deep_queue_nodes", "deep_queue_trace"]

#: Jobs in the RICC-2010-2 log.
RICC_JOBS = 447_794

# Size classes: (probability, candidate sizes drawn uniformly).
_SIZES: tuple[tuple[float, tuple[int, ...]], ...] = (
    (0.40, (1,)),
    (0.10, (2, 4)),
    (0.28, (8,)),
    (0.16, (16, 32, 64)),
    (0.05, (128, 256, 512)),
    (0.01, (1024, 2048)),
)
# The site's wall-time limits (seconds).
_LIMITS = np.array([600, 3600, 4 * 3600, 12 * 3600, 24 * 3600, 72 * 3600], dtype=np.int64)
_DAY = 86_400
_BURST_MEAN = 16.0
# Daily cycle: the arrival rate is 1 / (1 - _SWING sin(2 pi t / day)) times its mean.
_SWING = 0.85


def deep_queue_nodes(nodes: int = 1024, cores_per_node: int = 8) -> pa.Table:
    """Return the cluster of :func:`deep_queue_trace`: ``nodes`` x ``cores_per_node`` cores."""
    return synthetic_cluster_nodes(nodes, procs_per_node=cores_per_node)


def deep_queue_trace(
    num_jobs: int = RICC_JOBS,
    *,
    nodes: int = 1024,
    cores_per_node: int = 8,
    load: float = 0.95,
    seed: int = 0,
) -> pa.Table:
    """Generate a RICC-shaped deep-queue trace (see the module's description).

    Parameters
    ----------
    num_jobs
        Number of jobs (default: as many as RICC-2010-2).
    nodes, cores_per_node
        The machine the load is computed for.
    load
        Offered load: the jobs' processor-seconds over the machine's processor-seconds between
        the first and the last submission.
    seed
        Non-negative seed; the same arguments give the same table.

    Returns
    -------
    pyarrow.Table
        Jobs in :data:`~cplat.traces.schema.JOB_SCHEMA`, ``job_id`` 1..n in submit order,
        submit times from 0.

    Raises
    ------
    ValueError
        For a negative count or seed, a machine of no processors or a load not in (0, 10].
    """
    if num_jobs < 0 or seed < 0 or nodes < 1 or cores_per_node < 1:
        raise ValueError("num_jobs and seed must be >= 0, nodes and cores_per_node >= 1")
    if not 0.0 < load <= 10.0:
        raise ValueError(f"load must lie in (0, 10]; got {load}")
    n = int(num_jobs)
    procs = nodes * cores_per_node
    rng_burst, rng_size, rng_time, rng_est, rng_arrive, rng_user = (
        np.random.Generator(np.random.PCG64(s)) for s in np.random.SeedSequence(seed).spawn(6)
    )

    # Bursts: consecutive runs of jobs sharing a shape (size, estimate class, user).
    lengths = rng_burst.geometric(1.0 / _BURST_MEAN, size=max(n, 1))
    ends = np.cumsum(lengths)
    bursts = int(np.searchsorted(ends, n, side="left")) + 1
    burst_of = np.repeat(np.arange(bursts), lengths[:bursts])[:n]

    # Sizes per burst, capped at a quarter of the machine.
    probs = np.array([p for p, _ in _SIZES])
    cls = rng_size.choice(len(_SIZES), size=bursts, p=probs / probs.sum())
    pick = rng_size.random(bursts)
    size_b = np.empty(bursts, dtype=np.int64)
    for k, (_, sizes) in enumerate(_SIZES):
        sel = cls == k
        size_b[sel] = np.asarray(sizes)[(pick[sel] * len(sizes)).astype(np.int64)]
    size_b = np.minimum(size_b, max(procs // 4, 1))
    size = size_b[burst_of]

    # Run times: log-normal around a per-burst median; one in ten fails within a minute.
    median_b = np.exp(rng_time.normal(np.log(600.0), 1.6, bursts))
    runtime = np.exp(np.log(median_b[burst_of]) + rng_time.normal(0.0, 0.7, n))
    fails = rng_time.random(n) < 0.1
    runtime = np.where(fails, rng_time.uniform(1.0, 60.0, n), runtime)
    duration = np.clip(np.ceil(runtime), 1, int(_LIMITS[-1])).astype(np.int64)

    # Estimates: a per-burst limit at or above the longest run of the burst, moved up for
    # three bursts in five.
    longest = np.zeros(bursts, dtype=np.int64)
    np.maximum.at(longest, burst_of, duration)
    base = np.searchsorted(_LIMITS, longest, side="left")
    bump = np.where(rng_est.random(bursts) < 0.6, rng_est.integers(1, 4, bursts), 0)
    limit_idx = np.minimum(base + bump, len(_LIMITS) - 1)
    requested = np.maximum(_LIMITS[limit_idx][burst_of], duration)

    # Arrivals: bursts as a Poisson process whose rate follows a daily cycle, spaced for the
    # offered load; jobs of a burst a few seconds apart.
    work = float(np.sum(size * duration))
    span = work / (procs * load) if n else 0.0
    gaps = rng_arrive.exponential(1.0, bursts)
    raw = np.cumsum(gaps)
    raw *= span / raw[-1] if bursts and raw[-1] > 0 else 1.0
    # Daily cycle: warp time so that arrivals crowd into part of the day.
    phase = 2.0 * np.pi * raw / _DAY
    warped = raw - _SWING * _DAY / (2.0 * np.pi) * (1.0 - np.cos(phase))
    warped = np.maximum.accumulate(np.maximum(warped, 0.0))
    within = np.concatenate([[0], np.cumsum(lengths[:bursts])[:-1]])
    offset = np.arange(n) - within[burst_of]
    jitter = rng_arrive.integers(0, 5, n)
    submit = (np.floor(warped[burst_of]) + offset * jitter).astype(np.int64)
    order = np.argsort(submit, kind="stable")
    submit = submit[order] - (submit[order][0] if n else 0)
    size, duration, requested = size[order], duration[order], requested[order]
    users_b = rng_user.zipf(1.6, bursts) % 400
    user = users_b[burst_of][order]

    arrays: list[Any] = [
        pa.array(np.arange(1, n + 1, dtype=np.int64)),
        pa.array(submit, type=pa.int64()),
        pa.array(duration, type=pa.int64()),
        pa.array(requested.astype(np.int64), type=pa.int64()),
        pa.array(size.astype(np.int32), type=pa.int32()),
        pa.array(np.full(n, 1000, dtype=np.int64)),
        pa.array(np.zeros(n, dtype=np.int64)),
        pa.array(np.zeros(n, dtype=np.int32)),
        pa.array(np.zeros(n, dtype=np.int32)),
        pa.array([""] * n, type=pa.string()),
        pa.array([f"u{u}" for u in user.tolist()], type=pa.string()),
        pa.array([f"g{u % 40}" for u in user.tolist()], type=pa.string()),
        pa.array(np.zeros(n, dtype=np.int32)),
        pa.array(["batch"] * n, type=pa.string()),
    ]
    return pa.Table.from_arrays(arrays, schema=JOB_SCHEMA)
