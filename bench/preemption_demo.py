"""Preemption on the openb trace: high-priority waits and work lost by victim choice.

The openb pod list ran with almost no queueing, so its times are compressed (submit times
divided by ``--compress``, durations kept) and the cluster is a random ``--nodes`` sample of
the real node list. Priority comes from the pod's QoS class (LS and Guaranteed 3, Burstable 1,
BE 0); jobs checkpoint every ``--interval`` seconds at ``--cost`` seconds each.

    python bench/preemption_demo.py [--compress 300] [--nodes 200] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from cplat.model import NodeTable
from cplat.profile import POLICIES
from cplat.scheduler import Checkpointing, QueuePolicy, nodes_from_table
from cplat.sim.run import simulate
from cplat.traces.openb_jobs import read_openb_jobs

SHARED = Path(__file__).resolve().parents[2] / "shared/traces/alibaba-gpu-v2023-openb/csv"
PRIORITY = {"LS": 3, "Guaranteed": 3, "Burstable": 1, "BE": 0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=Path, default=SHARED)
    ap.add_argument("--compress", type=int, default=300)
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--interval", type=int, default=1800)
    ap.add_argument("--cost", type=int, default=60)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    trace = read_openb_jobs(
        args.traces / "openb_pod_list_default.csv", args.traces / "openb_node_list_gpu_node.csv"
    )
    jobs = trace.jobs
    submit = np.asarray(jobs.column("submit_time"))
    qos = jobs.column("queue").to_pylist()
    t0 = int(np.percentile(submit, 5))
    jobs = jobs.set_column(
        jobs.schema.get_field_index("submit_time"),
        "submit_time",
        pa.array(np.maximum(0, (submit - t0) // args.compress).astype(np.int64)),
    )
    prio = np.asarray([PRIORITY[q] for q in qos], dtype=np.int32)
    jobs = jobs.set_column(jobs.schema.get_field_index("priority"), "priority", pa.array(prio))
    full = nodes_from_table(trace.nodes)
    keep = np.sort(np.random.default_rng(0).choice(len(full), args.nodes, replace=False))
    nodes = NodeTable(
        name=tuple(full.name[i] for i in keep),
        cpu_milli=full.cpu_milli[keep],
        memory_mib=full.memory_mib[keep],
        num_gpu=full.num_gpu[keep],
        gpu_model=full.gpu_model[keep],
        models=full.models,
    )
    ck = Checkpointing(args.interval, args.cost)
    high = prio >= 3
    runs = [
        ("FCFS + EASY", QueuePolicy("fcfs", "easy")),
        ("priority + EASY", QueuePolicy("priority", "easy")),
        ("priority + EASY + preemption", QueuePolicy("priority", "easy", preemption="priority")),
        (
            "same, random victims",
            QueuePolicy("priority", "easy", preemption="priority", random_victims=True),
        ),
    ]
    lines = [
        "| policy | high-priority mean wait (s) | low-priority mean wait (s) | preemptions "
        "| lost GPU-hours |",
        "|---|---|---|---|---|",
    ]
    for name, q in runs:
        t = time.perf_counter()
        res = simulate(jobs, nodes, placement=POLICIES["bestfit"], queue=q, checkpoint=ck)
        done = res.start >= 0
        wait = res.start - res.columns.submit
        lines.append(
            f"| {name} | {wait[high & done].mean():.0f} | {wait[~high & done].mean():.0f} "
            f"| {res.preemptions} | {res.lost_work / 1000 / 3600:.1f} |"
        )
        print(f"{name}: {time.perf_counter() - t:.1f} s")
    table = "\n".join(lines)
    header = (
        f"openb default, {jobs.num_rows:,} pods, times / {args.compress}, {args.nodes} sampled "
        f"nodes ({int(nodes.num_gpu.sum())} GPUs), checkpoints every {args.interval} s "
        f"({args.cost} s each)"
    )
    print(header)
    print(table)
    if args.markdown:
        args.markdown.write_text(header + "\n\n" + table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
