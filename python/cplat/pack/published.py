"""Published per-run results of the FGD paper and comparison against cplat runs.

The authors' artifact publishes, for 9 workloads x 6 policies x 10 seeds, the allocation,
fragmentation and fragmentation-ratio curves in ``analysis_*_discrete.csv(.gz)``. A cplat run
agrees with a (workload, policy) cell when the mean over seeds lies within
``max(2 x published sd, 0.5)`` percentage points of the published mean.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cplat.pack.runs import PackRun
from cplat.traces._csv import open_text

#: File names of the published curves by kind.
PUBLISHED_FILES = {
    "alloc": "analysis_allo_discrete.csv.gz",
    "frag": "analysis_frag_discrete.csv.gz",
    "frag_ratio": "analysis_frag_ratio_discrete.csv.gz",
}

#: Minimum tolerance in percentage points.
MIN_TOLERANCE = 0.5


@dataclass(frozen=True)
class Cell:
    """One (workload, policy) comparison at one arrived-workload column."""

    workload: str
    policy: str
    kind: str
    column: int
    ours_mean: float
    ours_sd: float
    paper_mean: float
    paper_sd: float

    @property
    def tolerance(self) -> float:
        """Allowed distance: ``max(2 x published sd, 0.5)``."""
        return max(2 * self.paper_sd, MIN_TOLERANCE)

    @property
    def ok(self) -> bool:
        """Whether cplat's mean is within tolerance of the published mean."""
        return abs(self.ours_mean - self.paper_mean) <= self.tolerance


def load_published(directory: str | Path, kind: str) -> dict[tuple[str, str], list[list[float]]]:
    """Load published curves as ``{(workload, policy label): [curve per seed]}`` (NaN if empty)."""
    path = Path(directory) / PUBLISHED_FILES[kind]
    out: dict[tuple[str, str], list[list[float]]] = defaultdict(list)
    with open_text(path) as fh:
        for row in csv.DictReader(fh):
            curve = [float(row[str(k)]) if row.get(str(k)) else math.nan for k in range(131)]
            out[(row["workload"], row["sc_policy"])].append(curve)
    return dict(out)


def _value(curve: np.ndarray, kind: str) -> np.ndarray:
    # The allocation curve is compared as *unallocated* GPU, the paper's y axis.
    return 100.0 - curve if kind == "alloc" else curve


def compare(
    runs: Sequence[PackRun],
    published: dict[tuple[str, str], list[list[float]]],
    kind: str,
    columns: Iterable[int] = (100,),
) -> list[Cell]:
    """Compare runs with published curves at the given arrived-workload columns."""
    grouped: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
    for run in runs:
        if kind == "alloc":
            curve = run.allocation_curve()
        elif kind == "frag":
            curve = run.fragmentation_curve()
        else:
            curve = run.fragmentation_ratio_curve()
        grouped[(run.workload, run.policy.label)].append(_value(curve, kind))
    cells = []
    for (workload, label), curves in grouped.items():
        if (workload, label) not in published:
            continue
        ours = np.asarray(curves)
        paper = _value(np.asarray(published[(workload, label)]), kind)
        for col in columns:
            o = [float(v) for v in ours[:, col] if not math.isnan(v)]
            p = [float(v) for v in paper[:, col] if not math.isnan(v)]
            if not o or not p:
                continue
            cells.append(
                Cell(
                    workload=workload,
                    policy=label,
                    kind=kind,
                    column=col,
                    ours_mean=statistics.fmean(o),
                    ours_sd=statistics.stdev(o) if len(o) > 1 else 0.0,
                    paper_mean=statistics.fmean(p),
                    paper_sd=statistics.stdev(p) if len(p) > 1 else 0.0,
                )
            )
    return cells
