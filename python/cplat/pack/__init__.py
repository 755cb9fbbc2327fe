"""The static packing experiment (the FGD paper's protocol) and what surrounds it.

:mod:`.runs` fills a cluster with tasks until the first failure and records the curves;
:mod:`.synthetic` builds openb-shaped clusters and workloads; :mod:`.published` compares the
curves with published results; :mod:`.report` prints tables and draws the plots.
"""

from __future__ import annotations

from cplat.pack.runs import (
    ARRIVED_COLUMNS,
    PackRun,
    discretize,
    result_rows,
    run_many,
    run_pack,
    tuned_order,
)

__all__ = [
    "ARRIVED_COLUMNS",
    "PackRun",
    "discretize",
    "result_rows",
    "run_many",
    "run_pack",
    "tuned_order",
]
