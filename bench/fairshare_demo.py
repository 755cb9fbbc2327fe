"""Fair share on the openb trace: FCFS vs fair share vs multifactor vs DRF, tenants = QoS class.

The openb pod list (Alibaba cluster-trace-gpu-v2023) has no user or group, and ran with almost
no queueing. This script

1. writes a derived pod list (``pods.csv``) whose ``group`` column is the pod's ``qos``
   (tenants LS, BE, Burstable, Guaranteed) and whose creation/deletion times are divided by
   ``--compress`` (durations kept: submit' = submit // K, deletion' = submit' + duration),
   and a derived node list (``nodes.csv``) keeping every ``--node-stride``-th node, so that
   jobs contend for the cluster;
2. replays it with each queue policy (in process, as ``cplat sim`` does) and prints, per
   policy, Jain's index over tenants of their mean bounded slowdown (the ``Jain`` column of
   ``cplat sim``), the mean wait per tenant and the high-priority (LS + Guaranteed) waits;
3. prints the equivalent ``cplat sim`` commands on the derived files.

Usage::

    python bench/fairshare_demo.py [--compress 100] [--node-stride 8] [--out DIR] [--markdown F]
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

from cplat import metrics
from cplat.policy.fairshare import make_queue_sort, parse_queue_sort_spec
from cplat.scheduler import QueuePolicy, nodes_from_table
from cplat.sim.run import SimResult, simulate
from cplat.traces.openb_jobs import read_openb_jobs

SHARED = Path(__file__).resolve().parents[2] / "shared" / "traces" / "alibaba-gpu-v2023-openb"
PODS = SHARED / "csv" / "openb_pod_list_default.csv"
NODES = SHARED / "csv" / "openb_node_list_gpu_node.csv"
HIGH = ("LS", "Guaranteed")
QOS = "qos.Guaranteed=1,qos.LS=0.8,qos.Burstable=0.4,qos.BE=0"
POLICIES: dict[str, str | None] = {
    "fcfs": None,
    "fairshare": "fairshare:half_life=3600",
    "multifactor": f"multifactor:half_life=3600,max_age=3600,w_age=1,w_fairshare=1,w_qos=1,{QOS}",
    "drf": "drf",
}


def derive(pods: Path, nodes: Path, compress: int, stride: int, out: Path) -> tuple[Path, Path]:
    """Write the derived pod and node lists; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    pod_out, node_out = out / "pods.csv", out / "nodes.csv"
    with pods.open(newline="") as fh, pod_out.open("w", newline="") as dst:
        reader = csv.DictReader(fh)
        fields = [*(reader.fieldnames or []), "group"]
        writer = csv.DictWriter(dst, fieldnames=fields)
        writer.writeheader()
        for row in reader:
            row["group"] = row["qos"]
            created, deleted = row["creation_time"].strip(), row["deletion_time"].strip()
            if created and deleted:
                c, d = int(created), int(deleted)
                row["creation_time"] = str(c // compress)
                row["deletion_time"] = str(c // compress + (d - c))
                sched = row.get("scheduled_time", "").strip()
                if sched:
                    row["scheduled_time"] = row["creation_time"]
            writer.writerow(row)
    with nodes.open(newline="") as fh, node_out.open("w", newline="") as dst:
        reader = csv.DictReader(fh)
        writer = csv.DictWriter(dst, fieldnames=list(reader.fieldnames or []))
        writer.writeheader()
        for i, row in enumerate(reader):
            if i % stride == 0:
                writer.writerow(row)
    return pod_out, node_out


def tenant_stats(r: SimResult) -> dict[str, float]:
    """Jain over tenants (mean bounded slowdown), waits per tenant and of high-priority jobs."""
    done = (r.start >= 0) & (r.end >= 0)
    groups = np.asarray(r.columns.group, dtype=object)
    slow = metrics.bounded_slowdown(r.columns.submit[done], r.start[done], r.end[done])
    per_slow = metrics.group_breakdown(groups[done], slow, "mean")
    wait = (r.start - r.columns.submit).astype(np.float64)[done]
    per_wait = metrics.group_breakdown(groups[done], wait, "mean")
    high = np.isin(groups[done], HIGH)
    out = {
        "jain_slowdown": metrics.jain_index(list(per_slow.values())),
        "jain_wait_per_tenant": metrics.jain_index(list(per_wait.values())),
        "mean_wait": float(wait.mean()),
        "high_mean_wait": float(wait[high].mean()),
        "high_p95_wait": float(np.percentile(wait[high], 95)),
        "finished": float(done.sum()),
    }
    for g, v in per_wait.items():
        out[f"wait_{g}"] = v
    for g, v in per_slow.items():
        out[f"bsld_{g}"] = v
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pods", type=Path, default=PODS)
    ap.add_argument("--nodes", type=Path, default=NODES)
    ap.add_argument("--compress", type=int, default=100, help="divide submit times by K")
    ap.add_argument("--node-stride", type=int, default=8, help="keep every N-th node")
    ap.add_argument("--backfill", default="easy")
    ap.add_argument("--out", type=Path, default=Path("cplat-out/fairshare-demo"))
    ap.add_argument("--markdown", type=Path, help="also write the table as Markdown")
    args = ap.parse_args()
    pods, nodes_csv = derive(args.pods, args.nodes, args.compress, args.node_stride, args.out)
    trace = read_openb_jobs(pods, nodes_csv)
    assert trace.nodes is not None
    jobs, nodes = trace.jobs, nodes_from_table(trace.nodes)
    print(
        f"{jobs.num_rows} jobs, {len(nodes)} nodes ({int(nodes.num_gpu.sum())} GPUs), "
        f"time / {args.compress}, every {args.node_stride}th node, backfill {args.backfill}"
    )
    # Shares proportional to each tenant's GPU-seconds of demand (integers, for the CLI).
    groups = np.asarray(jobs.column("group").to_pylist(), dtype=object)
    gpu_s = (
        np.asarray(jobs.column("num_gpu"), dtype=np.float64)
        * np.asarray(jobs.column("gpu_milli"), dtype=np.float64)
        * np.asarray(jobs.column("duration"), dtype=np.float64)
    )
    demand = metrics.group_breakdown(groups, gpu_s, "share")
    shares = ",".join(f"shares.{g}={max(round(1000 * v), 1)}" for g, v in demand.items())
    policies = dict(POLICIES)
    policies["fairshare-demand"] = f"fairshare:half_life=3600,{shares}"
    rows: list[tuple[str, dict[str, float], float]] = []
    for name, spec in policies.items():
        plugin = None
        order = "fcfs"
        if spec is not None:
            kind, options = parse_queue_sort_spec(spec)
            plugin = make_queue_sort(kind, nodes, jobs, options)
            order = "priority"
        t0 = time.perf_counter()
        r = simulate(jobs, nodes, queue=QueuePolicy(order, args.backfill), queue_sort=plugin)
        rows.append((name, tenant_stats(r), time.perf_counter() - t0))
    tenants = ("LS", "BE", "Burstable", "Guaranteed")
    head = (
        "| policy | Jain (tenant mean bsld) | Jain (tenant mean wait) | mean wait (s) | "
        "LS+Guaranteed mean wait (s) | LS+Guaranteed p95 wait (s) | "
        + " | ".join(f"{t} wait / bsld" for t in tenants)
        + " | sim s |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, s, secs in rows:
        cells = [
            name,
            f"{s['jain_slowdown']:.3f}",
            f"{s['jain_wait_per_tenant']:.3f}",
            f"{s['mean_wait']:,.0f}",
            f"{s['high_mean_wait']:,.0f}",
            f"{s['high_p95_wait']:,.0f}",
            *(
                f"{s.get(f'wait_{t}', float('nan')):,.0f} / {s.get(f'bsld_{t}', 0):.1f}"
                for t in tenants
            ),
            f"{secs:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    print("\nthe same runs with cplat sim:")
    base = f"cplat sim --trace openb:{pods} --nodes {nodes_csv} --backfill {args.backfill}"
    for name, spec in policies.items():
        extra = "--policy fcfs" if spec is None else f"--queue-sort {spec}"
        print(f"{base} {extra} --out {args.out / name}")
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
