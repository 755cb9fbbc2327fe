"""Terminal tables and plots for packing results."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from cplat.pack.runs import ARRIVED_COLUMNS, PackRun


def _by_policy(runs: Sequence[PackRun]) -> dict[str, list[PackRun]]:
    grouped: dict[str, list[PackRun]] = defaultdict(list)
    for run in runs:
        grouped[run.policy.label].append(run)
    return dict(grouped)


def _mean_sd(values: list[float], digits: int = 2) -> str:
    values = [v for v in values if not np.isnan(v)]
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {sd:.{digits}f}"


def pack_table(runs: Sequence[PackRun], column: int = 100, title: str | None = None) -> Table:
    """Per policy: unallocated and fragmented GPU at one arrived column, failed tasks."""
    table = Table(
        title=title or f"Static packing at {column}% arrived workload (mean ± sd over seeds)",
        caption=pack_caption(column),
        caption_justify="left",
    )
    table.add_column("policy", no_wrap=True)
    table.add_column("unalloc %", justify="right", no_wrap=True)
    table.add_column("frag %", justify="right", no_wrap=True)
    table.add_column("frag/idle %", justify="right", no_wrap=True)
    table.add_column("failed", justify="right", no_wrap=True)
    for label, group in _by_policy(runs).items():
        table.add_row(
            label,
            _mean_sd([100 - float(r.allocation_curve()[column]) for r in group]),
            _mean_sd([float(r.fragmentation_curve()[column]) for r in group]),
            _mean_sd([float(r.fragmentation_ratio_curve()[column]) for r in group]),
            _mean_sd([float(r.failed_by(column)) for r in group], digits=0),
        )
    return table


def pack_caption(column: int = 100) -> str:
    """Footnote of :func:`pack_table`: what each column means, ``failed`` especially."""
    return (
        "unalloc: GPU left unallocated, % of capacity (lower is better). frag: idle GPU that "
        "the typical task cannot use, % of capacity and % of idle GPU. failed: tasks arrived "
        f"by {column}% that no node could hold (free GPU, CPU and memory at once); static "
        "packing drops them and never frees anything, so fewer failures mean usable room kept."
    )


def print_pack_table(runs: Sequence[PackRun], console: Console | None = None) -> None:
    """Print :func:`pack_table` to the terminal."""
    (console or Console()).print(pack_table(runs))


def plot_pack(runs: Sequence[PackRun], path: str | Path, title: str = "") -> Path:
    """Plot unallocated GPU % against arrived workload (median over seeds) to a PNG file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    x = np.asarray(ARRIVED_COLUMNS)
    for label, group in _by_policy(runs).items():
        unalloc = np.nanmedian([100 - r.allocation_curve() for r in group], axis=0)
        frag = np.nanmedian([r.fragmentation_curve() for r in group], axis=0)
        ax1.plot(x, unalloc, label=label)
        ax2.plot(x, frag, label=label)
    ax1.set_xlabel("arrived workload (% of GPU capacity)")
    ax1.set_ylabel("unallocated GPU (%)")
    ax1.set_xlim(0, 130)
    ax1.set_ylim(bottom=0)
    ax1.grid(alpha=0.3)
    ax2.set_xlabel("arrived workload (% of GPU capacity)")
    ax2.set_ylabel("fragmented GPU (% of capacity)")
    ax2.set_xlim(0, 130)
    ax2.set_ylim(bottom=0)
    ax2.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    fig.suptitle(title or "cplat static packing (median over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
