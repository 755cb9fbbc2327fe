"""The live cluster at 10,000 nodes: registration bursts, cycles, rebuilds around running jobs.

Usage: ``python bench/bench_live.py [--quick] [--nodes N]``. Prints medians of repeated runs;
reports, does not gate.
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench_engine import machine

from cplat.profile import POLICIES
from cplat.runtime.live import LiveCluster, LiveJob, LiveNode
from cplat.scheduler import QueuePolicy


def cluster() -> LiveCluster:
    return LiveCluster(POLICIES["bestfit"], QueuePolicy(order="priority", backfill="easy"))


def nodes(n: int, offset: int = 0) -> list[LiveNode]:
    return [
        LiveNode(
            f"gpu-{offset + i:05d}", 64_000, 512 * 1024, 8, "A100-SXM4-80GB", i // 32, i // 1024
        )
        for i in range(n)
    ]


def jobs(n: int, first: int) -> list[LiveJob]:
    # Mostly one-GPU jobs, some shares and some 8-GPU gangs of 2.
    out = []
    for k in range(n):
        jid = first + k
        if k % 10 == 0:
            out.append(LiveJob(jid, "p", 0, 3600, 2, 8000, 65536, 8, 1000))
        elif k % 3 == 0:
            out.append(LiveJob(jid, "p", 0, 3600, 1, 1000, 4096, 1, 500))
        else:
            out.append(LiveJob(jid, "p", 0, 3600, 1, 4000, 16384, 1, 1000))
    return out


def run_once(n_nodes: int) -> dict[str, float]:
    c = cluster()
    t = time.perf_counter()
    for node in nodes(n_nodes):
        c.upsert_node(node, 0)
    c.cycle(0)
    register = time.perf_counter() - t
    c.add_many(jobs(n_nodes, 1))
    t = time.perf_counter()
    started = c.cycle(1)
    first_cycle = time.perf_counter() - t
    c.add_many(jobs(n_nodes, 10 * n_nodes))
    t = time.perf_counter()
    c.cycle(2)
    busy_cycle = time.perf_counter() - t
    c.add_many(jobs(1, 100 * n_nodes))
    t = time.perf_counter()
    c.cycle(3)
    steady = time.perf_counter() - t
    t = time.perf_counter()
    c.upsert_node(nodes(1, n_nodes)[0], 3)  # a node joins: rebuild around the running jobs
    c.cycle(3)
    rebuild = time.perf_counter() - t
    assert c.lost == []
    return {
        "register": register,
        "first_cycle": first_cycle,
        "started": float(len(started)),
        "busy_cycle": busy_cycle,
        "steady": steady,
        "rebuild": rebuild,
        "running": float(c.num_running),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="2,000 nodes, one repetition")
    p.add_argument("--nodes", type=int, default=10_000)
    args = p.parse_args()
    n = 2_000 if args.quick else args.nodes
    reps = 1 if args.quick else 3
    runs = [run_once(n) for _ in range(reps)]

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    print(f"machine: {machine()}")
    print(f"live cluster, {n:,} nodes x 8 GPUs, median of {reps}")
    print(f"  {n:,} registrations + first build     {med('register') * 1e3:9.1f} ms")
    print(
        f"  cycle placing {med('started'):,.0f} of {n:,} pending jobs  "
        f"{med('first_cycle') * 1e3:9.1f} ms"
    )
    print(f"  cycle when {n:,} more arrive at once    {med('busy_cycle') * 1e3:9.1f} ms")
    print(f"  next cycle, one more job submitted      {med('steady') * 1e3:9.1f} ms")
    print(
        f"  node joins: rebuild around {med('running'):,.0f} running jobs "
        f"{med('rebuild') * 1e3:9.1f} ms"
    )


if __name__ == "__main__":
    main()
