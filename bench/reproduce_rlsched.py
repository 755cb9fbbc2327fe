"""Reproduce the RLScheduler paper's heuristic tables (bounded slowdown and utilization).

python bench/reproduce_rlsched.py [--traces ../shared/traces/swf-lublin-synthetic]
                                  [--markdown docs/rlsched-reproduction.md]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cplat.sim.rlsched import ORDERS, PUBLISHED, evaluate, sequence_starts
from cplat.traces.swf import read_swf

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared/traces/swf-lublin-synthetic"
NAMES = {"lublin_256": "Lublin-1", "lublin_256_new2": "Lublin-2"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=Path, default=DEFAULT)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    lines = [
        "| trace | backfill | policy | bounded slowdown (cplat) | (paper) | deviation "
        "| utilization (cplat) | (paper) | deviation |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    worst = 0.0
    for stem, name in NAMES.items():
        trace = read_swf(args.traces / f"{stem}.swf.gz")
        starts = sequence_starts(trace.jobs.num_rows)
        for backfill in (False, True):
            for order in ORDERS:
                res = evaluate(trace, order, backfill, starts)
                b = float(np.mean([r.bounded_slowdown for r in res]))
                u = float(np.mean([r.utilization for r in res]))
                pb, pu = PUBLISHED[(stem, backfill)][order]
                db, du = 100 * (b / pb - 1), 100 * (u / pu - 1)
                worst = max(worst, abs(db), abs(du))
                lines.append(
                    f"| {name} | {'yes' if backfill else 'no'} | {order.upper()} "
                    f"| {b:.2f} | {pb:.2f} | {db:+.2f}% | {u:.3f} | {pu:.3f} | {du:+.2f}% |"
                )
    table = "\n".join(lines)
    summary = f"largest deviation: {worst:.2f}% (tolerance 5%)"
    print(table)
    print(summary)
    if args.markdown:
        args.markdown.write_text(table + "\n\n" + summary + "\n")
    return 0 if worst <= 5.0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
