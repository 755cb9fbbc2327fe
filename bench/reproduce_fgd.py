"""Reproduce the FGD paper's static-packing table on the real openb trace.

Runs every published workload x the six policies x seeds 42..51 and compares the mean
unallocated GPU % (and fragmentation) at arrived workload 100 % with the authors' results.

    python bench/reproduce_fgd.py [--traces ../shared/traces/alibaba-gpu-v2023-openb]
                                  [--workloads default,cpu050,...] [--seeds 42-51]
                                  [--markdown docs/fgd-reproduction.md]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from cplat.cli.main import parse_seeds
from cplat.pack import run_many
from cplat.pack.published import compare, load_published
from cplat.profile import PAPER_POLICIES, POLICIES
from cplat.traces import read_openb_nodes, read_openb_pods

WORKLOADS = (
    "default",
    "cpu050",
    "cpu100",
    "cpu200",
    "cpu250",
    "gpushare40",
    "gpushare60",
    "gpushare80",
    "gpushare100",
)
DEFAULT_TRACES = (
    Path(__file__).resolve().parents[1].parent / "shared/traces/alibaba-gpu-v2023-openb"
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=Path, default=DEFAULT_TRACES)
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--seeds", default="42-51")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    args = ap.parse_args()

    csv_dir = args.traces / "csv"
    expected_dir = args.traces / "fgd_expected_results"
    published = {k: load_published(expected_dir, k) for k in ("alloc", "frag", "frag_ratio")}
    nodes = read_openb_nodes(csv_dir / "openb_node_list_gpu_node.csv")
    seeds = parse_seeds(args.seeds)
    profiles = [POLICIES[p] for p in PAPER_POLICIES]

    lines = [
        "| workload | policy | unallocated % (cplat) | unallocated % (paper) | tol | ok "
        "| frag % (cplat) | frag % (paper) | ok |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    total_runs, failures = 0, 0
    started = time.perf_counter()
    for w in args.workloads.split(","):
        name = f"openb_pod_list_{w}"
        pods = read_openb_pods(csv_dir / f"{name}.csv", nodes.models)
        t0 = time.perf_counter()
        runs = run_many(nodes, pods, profiles, seeds, 1.3, workload_name=name, jobs=args.jobs)
        total_runs += len(runs)
        alloc = {c.policy: c for c in compare(runs, published["alloc"], "alloc")}
        frag = {c.policy: c for c in compare(runs, published["frag"], "frag")}
        for p in profiles:
            a, f = alloc.get(p.label), frag.get(p.label)
            if a is None or f is None:
                continue
            failures += (not a.ok) + (not f.ok)
            lines.append(
                f"| {w} | {p.label} | {a.ours_mean:.2f} ± {a.ours_sd:.2f} | "
                f"{a.paper_mean:.2f} ± {a.paper_sd:.2f} | {a.tolerance:.2f} | "
                f"{'yes' if a.ok else 'NO'} | {f.ours_mean:.2f} | {f.paper_mean:.2f} | "
                f"{'yes' if f.ok else 'NO'} |"
            )
        print(f"{w}: {len(runs)} runs in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    elapsed = time.perf_counter() - started
    table = "\n".join(lines)
    print(table)
    summary = (
        f"\n{total_runs} runs in {elapsed:.1f} s wall ({args.jobs} threads); "
        f"{failures} cells outside tolerance"
    )
    print(summary)
    if args.markdown:
        args.markdown.write_text(table + "\n" + summary.strip() + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
