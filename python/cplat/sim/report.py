"""Summaries, tables, plots and files for simulation runs."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.table import Table

from cplat import metrics
from cplat.sim.run import SimResult


@dataclass(frozen=True)
class Run:
    """One named simulation run and its wall time."""

    name: str
    result: SimResult
    seconds: float


def _size_and_capacity(result: SimResult) -> tuple[np.ndarray, int, str]:
    cols = result.columns
    wants_gpu = bool((cols.num_gpu > 0).any()) and result.capacity_gpu_milli > 0
    if wants_gpu:
        size = cols.num_tasks.astype(np.int64) * cols.num_gpu.astype(np.int64) * cols.gpu_milli
        return size, result.capacity_gpu_milli, "gpu"
    size = cols.num_tasks.astype(np.int64) * cols.cpu_milli
    return size, max(result.capacity_cpu_milli, 1), "cpu"


Summary = dict[str, object]


def group_table(r: SimResult, limit: int = 20) -> dict[str, dict[str, float]]:
    """Per-group jobs, mean wait and mean bounded slowdown (the ``limit`` largest groups)."""
    done = (r.start >= 0) & (r.end >= 0)
    groups = np.asarray(r.columns.group, dtype=object)
    wait = (r.start - r.columns.submit).astype(np.float64)
    slow = np.full(len(groups), np.nan)
    if done.any():
        slow[done] = metrics.bounded_slowdown(r.columns.submit[done], r.start[done], r.end[done])
    names, counts = np.unique(groups, return_counts=True)
    out: dict[str, dict[str, float]] = {}
    for g in names[np.argsort(-counts, kind="stable")][:limit]:
        sel = (groups == g) & done
        out[str(g)] = {
            "jobs": float((groups == g).sum()),
            "mean_wait": float(wait[sel].mean()) if sel.any() else math.nan,
            "mean_bounded_slowdown": float(slow[sel].mean()) if sel.any() else math.nan,
        }
    return out


def summarize(run: Run) -> dict[str, float | int | str]:
    """Headline metrics of a run (see :func:`cplat.metrics.summary`) plus run bookkeeping."""
    r = run.result
    size, capacity, dim = _size_and_capacity(r)
    out: dict[str, float | int | str] = {"policy": run.name, "resource": dim}
    out.update(
        metrics.summary(
            r.columns.submit,
            r.start,
            r.end,
            size,
            float(capacity),
            users=np.asarray(r.columns.user, dtype=object),
            groups=np.asarray(r.columns.group, dtype=object),
        )
    )
    # Fairness of service quality: Jain's index over groups of their mean bounded slowdown.
    done = (r.start >= 0) & (r.end >= 0)
    if done.any():
        slow = metrics.bounded_slowdown(r.columns.submit[done], r.start[done], r.end[done])
        groups = np.asarray(r.columns.group, dtype=object)[done]
        per_group = metrics.group_breakdown(groups, slow, "mean")
        out["jain_group_slowdown"] = metrics.jain_index(list(per_group.values()))
    else:
        out["jain_group_slowdown"] = math.nan
    out["restarts"] = int(np.asarray(r.jobs.column("restarts")).sum())
    out["node_failures"] = r.node_failures
    out["estimated_requested_times"] = int(r.columns.estimated.sum())
    out["sim_seconds"] = round(run.seconds, 3)
    out["jobs_per_second"] = round(len(r.columns) / run.seconds, 1) if run.seconds > 0 else 0.0
    return out


def _fmt(value: float | int | str, digits: int = 2) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _duration(value: float | int | str) -> str:
    if isinstance(value, str) or (isinstance(value, float) and math.isnan(value)):
        return "-"
    v = float(value)
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if v >= 2 * size:
            return f"{v / size:.1f}{unit}"
    return f"{v:.0f}s"


def _rate(value: float | int | str) -> str:
    if isinstance(value, str):
        return value
    return f"{float(value) / 1000:.0f}k" if float(value) >= 1000 else f"{float(value):.0f}"


def compare_table(summaries: Sequence[dict[str, float | int | str]], title: str) -> Table:
    """One row per run: waits, slowdown, utilization, fairness, speed."""
    table = Table(title=title)
    table = Table(
        title=title,
        caption="wait: mean and 95th percentile; bsld: mean bounded slowdown (10 s); util: "
        "mean utilization; Jain: fairness of mean slowdown across groups; jobs/s: replay speed",
    )
    for name in ("policy", "done", "wait", "p95 wait", "bsld", "util", "Jain", "jobs/s"):
        table.add_column(name, justify="left" if name == "policy" else "right", no_wrap=True)
    for s in summaries:
        table.add_row(
            str(s["policy"]),
            _fmt(s["finished"]),
            _duration(s["mean_wait"]),
            _duration(s["p95_wait"]),
            _fmt(s["mean_bounded_slowdown"], 1),
            _fmt(s["mean_utilization"], 3),
            _fmt(s["jain_group_slowdown"], 3),
            _rate(s["jobs_per_second"]),
        )
    return table


def write_outputs(
    runs: Sequence[Run], out: Path, extra: dict[str, object] | None = None
) -> list[Path]:
    """Write per-run ``jobs.parquet`` and decision logs, ``summary.json`` and the plots.

    ``extra`` (e.g. the trace reader's skipped-row counts) is stored with every run's summary.
    """
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    single = len(runs) == 1
    for run in runs:
        folder = out if single else out / run.name.replace("+", "_")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "jobs.parquet"
        pq.write_table(run.result.jobs, path)
        written.append(path)
        if run.result.log:
            log = folder / "decisions.log"
            log.write_text("\n".join(run.result.log) + "\n")
            written.append(log)
    summary = out / "summary.json"
    entries: list[Summary] = []
    for r in runs:
        entry: Summary = dict(_jsonable(summarize(r)))
        entry["groups"] = {
            g: _jsonable(v)  # type: ignore[arg-type]
            for g, v in group_table(r.result).items()
        }
        entry.update(extra or {})
        entries.append(entry)
    summary.write_text(json.dumps(entries, indent=2, allow_nan=False) + "\n")
    written.append(summary)
    written.extend(plot_runs(runs, out))
    return written


def _jsonable(d: dict[str, float | int | str]) -> dict[str, float | int | str | None]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def _binned(t: np.ndarray, v: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Time-weighted mean of a step function (value v[i] on [t[i], t[i+1])) over equal bins."""
    if len(t) < 2:
        return t.astype(np.float64), v.astype(np.float64)
    edges = np.linspace(float(t[0]), float(t[-1]), bins + 1)
    # Integral of the step function up to each edge.
    area = np.concatenate([[0.0], np.cumsum(v[:-1] * np.diff(t))])
    idx = np.clip(np.searchsorted(t, edges, side="right") - 1, 0, len(t) - 1)
    at_edges = area[idx] + v[idx] * (edges - t[idx])
    width = np.diff(edges)
    return (edges[:-1] + edges[1:]) / 2, np.diff(at_edges) / np.where(width > 0, width, 1.0)


def plot_runs(runs: Sequence[Run], out: Path) -> list[Path]:
    """Utilization and queue length over time, and the wait-time CDF, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, (ax_u, ax_q) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for run in runs:
        r = run.result
        size, capacity, dim = _size_and_capacity(r)
        started = r.start >= 0
        end = np.where(started & (r.end < 0), r.start.max(initial=0), r.end)
        t, u = metrics.utilization_series(r.start[started], end[started], size[started], capacity)
        centers, avg = _binned(t, u, bins=150)
        ax_u.plot(centers / 3600, avg, label=run.name, linewidth=0.9)
        tq, q = metrics.queue_length_series(r.columns.submit, r.start)
        ax_q.step(tq / 3600, q, where="post", label=run.name, linewidth=0.8)
    ax_u.set_ylabel(f"{dim} utilization (binned mean)")
    ax_u.set_ylim(0, 1.05)
    ax_q.set_ylabel("queued jobs")
    ax_q.set_xlabel("time (hours)")
    ax_u.legend(fontsize=7, ncol=2)
    for ax in (ax_u, ax_q):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    p = out / "utilization_queue.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    if any(len(run.result.gpu_series) for run in runs):
        fig, (ax_a, ax_f) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
        for run in runs:
            g = run.result.gpu_series
            if not len(g):
                continue
            cap = max(run.result.capacity_gpu_milli, 1)
            ax_a.plot(g[:, 0] / 3600, 100 * g[:, 1] / cap, label=run.name, linewidth=0.8)
            ax_f.plot(g[:, 0] / 3600, 100 * g[:, 2] / cap, label=run.name, linewidth=0.8)
        ax_a.set_ylabel("GPU allocated (%)")
        ax_f.set_ylabel("GPU fragmented (%)")
        ax_f.set_xlabel("time (hours)")
        ax_a.legend(fontsize=7, ncol=2)
        for ax in (ax_a, ax_f):
            ax.grid(alpha=0.3)
        fig.tight_layout()
        p = out / "gpu_allocation_fragmentation.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in runs:
        r = run.result
        ok = r.start >= 0
        waits = np.sort(r.start[ok] - r.columns.submit[ok])
        if len(waits):
            ax.step(np.maximum(waits, 1), np.arange(1, len(waits) + 1) / len(waits), label=run.name)
    ax.set_xscale("log")
    ax.set_xlabel("wait (s, log scale; 0 shown as 1)")
    ax.set_ylabel("fraction of jobs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    p = out / "wait_cdf.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths
