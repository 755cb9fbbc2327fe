"""Python scorer (numba) against the native one: BestFit placements/s on openb, same run.

python bench/bench_pyscorer.py [--quick] [--traces DIR]

Places openb's default pod list on its GPU nodes (``alibaba-gpu-v2023-openb`` under
``$CPLAT_TRACES`` or ``../shared/traces`` when present, else the seeded openb-like synthetic
cluster and tasks) with the native ``bestfit`` scorer and with
:data:`cplat.policy.py_scorers.bestfit`, checks that both place every task identically, and
reports placements/s of each and their ratio (goal: the Python scorer within 2x of the native
one). Placement reuses cached scores of nodes that did not
change, for both scorers alike; the second figure, scores/s of ``Engine.score`` (every node,
no cache), prices the callback itself. Needs numba (``pip install 'cplat[research]'``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cplat.cluster import new_engine, new_state
from cplat.model import NodeTable, TaskTable
from cplat.profile import POLICIES, Profile

#: Goal: the Python scorer's placements/s at least 1/2 of the native scorer's.
TARGET_RATIO = 2.0
DEFAULT_TRACES = Path(
    os.environ.get("CPLAT_TRACES") or Path(__file__).resolve().parents[1].parent / "shared/traces"
)


def workload(traces: Path | None, quick: bool) -> tuple[str, NodeTable, TaskTable]:
    """The openb GPU nodes and default pods when the trace is there, else synthetic ones."""
    root = (traces or DEFAULT_TRACES) / "alibaba-gpu-v2023-openb" / "csv"
    if (root / "openb_pod_list_default.csv").is_file():
        from cplat.traces.openb import read_openb_nodes, read_openb_pods

        nodes = read_openb_nodes(root / "openb_node_list_gpu_node.csv")
        tasks = read_openb_pods(root / "openb_pod_list_default.csv", nodes.models)
        source = "openb (default pods, GPU nodes)"
    else:
        from cplat.pack.synthetic import synthetic_cluster, synthetic_tasks

        nodes = synthetic_cluster(1213, seed=0)
        tasks = synthetic_tasks(nodes, seed=0, load=1.0)
        source = "openb-like synthetic (1,213 nodes)"
    if quick:
        tasks = tasks.take(np.arange(min(len(tasks), 2000)))
    return source, nodes, tasks


def best_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Fastest of ``repeats`` runs (the least disturbed by other work on the machine)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def run(quick: bool, traces: Path | None = None) -> dict[str, Any]:
    """Measure both scorers; returns the figures (``ratio``: native / Python placements/s)."""
    from cplat.policy import py_scorers  # compiles the scorers (needs numba)

    source, nodes, tasks = workload(traces, quick)
    repeats = 3 if quick else 7

    def place(profile: Profile) -> dict[str, Any]:
        engine = new_engine(new_state(nodes), profile, 0)
        return engine.place_batch(
            tasks.cpu_milli, tasks.memory_mib, tasks.num_gpu, tasks.gpu_milli, tasks.models
        )

    # Interleaved, so that drift in the machine's speed hits both alike.
    native_t, python_t = float("inf"), float("inf")
    native_out = python_out = None
    for _ in range(repeats):
        t, native_out = best_time(lambda: place(POLICIES["bestfit"]), 1)
        native_t = min(native_t, t)
        t, python_out = best_time(lambda: place(py_scorers.bestfit_profile()), 1)
        python_t = min(python_t, t)
    assert native_out is not None and python_out is not None
    same = all(np.array_equal(native_out[k], python_out[k]) for k in ("node", "code", "gpus"))

    # Uncached scoring of every node for a mix of task shapes.
    state = new_state(nodes)
    native_e = new_engine(state, POLICIES["bestfit"], 0)
    python_e = new_engine(state, py_scorers.bestfit_profile(), 0)
    shapes = [(4000, 8192, 1, 500), (12000, 32768, 1, 1000), (16000, 1024, 2, 1000)] * (
        20 if quick else 100
    )

    def score(engine: Any, name: str) -> None:
        for s in shapes:
            engine.score(name, *s, 0)

    score_native, _ = best_time(lambda: score(native_e, "bestfit"), repeats)
    score_python, _ = best_time(lambda: score(python_e, "python"), repeats)
    calls = len(shapes) * len(nodes)
    return {
        "source": source,
        "nodes": len(nodes),
        "tasks": len(tasks),
        "placed": int((native_out["node"] >= 0).sum()),
        "same_placements": bool(same),
        "native_placements_per_s": len(tasks) / native_t,
        "python_placements_per_s": len(tasks) / python_t,
        "ratio": python_t / native_t,
        "native_scores_per_s": calls / score_native,
        "python_scores_per_s": calls / score_python,
        "score_ratio": score_python / score_native,
        "target_ratio": TARGET_RATIO,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer tasks and repeats (CI)")
    ap.add_argument("--traces", type=Path, default=None, help="folder holding the traces")
    args = ap.parse_args()
    r = run(args.quick, args.traces)
    print(f"workload: {r['source']}: {r['nodes']} nodes, {r['tasks']} tasks, {r['placed']} placed")
    print(f"placements identical: {'yes' if r['same_placements'] else 'NO'}")
    print(f"{'scorer':<22}{'placements/s':>14}{'scores/s (uncached)':>22}")
    print(f"{'native bestfit':<22}{r['native_placements_per_s']:>14,.0f}"
          f"{r['native_scores_per_s']:>22,.0f}")  # fmt: skip
    print(f"{'python bestfit (numba)':<22}{r['python_placements_per_s']:>14,.0f}"
          f"{r['python_scores_per_s']:>22,.0f}")  # fmt: skip
    verdict = "within" if r["ratio"] <= TARGET_RATIO else "OUTSIDE"
    print(f"ratio native/python: placements {r['ratio']:.2f}x ({verdict} the {TARGET_RATIO:.0f}x "
          f"goal), uncached scores {r['score_ratio']:.2f}x")  # fmt: skip
    return 0 if r["same_placements"] else 1


if __name__ == "__main__":
    sys.exit(main())
