"""Summaries, tables, plots and files for simulation runs."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.table import Table

from cplat import metrics
from cplat.sim.run import SimResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


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
    started = _ever_started(r)
    out["started"] = int(started.sum())
    out["never_started"] = int(len(started) - started.sum())
    out["restarts"] = int(np.asarray(r.jobs.column("restarts")).sum())
    out["node_failures"] = r.node_failures
    out["estimated_requested_times"] = int(r.columns.estimated.sum())
    out["sim_seconds"] = round(run.seconds, 3)
    out["jobs_per_second"] = round(len(r.columns) / run.seconds, 1) if run.seconds > 0 else 0.0
    return out


def _ever_started(r: SimResult) -> np.ndarray:
    """Return per job whether it ever started (a requeued job waiting at the horizon did)."""
    return (r.start >= 0) | (r.end >= 0) | (np.asarray(r.jobs.column("restarts")) > 0)


def unstarted_warning(run: Run) -> str | None:
    """One line saying how many jobs a run never started and why, or ``None`` when all did.

    A run that leaves jobs unstarted computes its waits and slowdowns over the jobs that
    started, which can look good for the worst policy (the one that blocked the queue): the
    line is printed beside the table so that the table cannot be read without it.
    """
    r = run.result
    started = _ever_started(r)
    never = int(len(started) - started.sum())
    if never == 0:
        return None
    reasons = np.asarray(r.jobs.column("pending_reason").to_pylist(), dtype=object)[~started]
    names, counts = np.unique(reasons.astype(str), return_counts=True)
    top = sorted(zip(counts.tolist(), names.tolist(), strict=True), key=lambda x: (-x[0], x[1]))
    why = ", ".join(f"{name or 'unknown'} {count:,}" for count, name in top[:3])
    return (
        f"warning: {run.name}: {never:,} of {len(started):,} jobs never started ({why}); "
        "waits and slowdowns cover only the jobs that started"
    )


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


def util_note(summaries: Sequence[dict[str, float | int | str]]) -> str | None:
    """One line explaining why several runs share a utilization figure, or ``None``.

    ``util`` is busy resource-time over capacity x makespan (first submit to last end). When
    every job finishes, the busy resource-time is the same under every policy, so ``util``
    differs only where the makespan does; the makespan is set by the last job to end, and on
    a trace whose last job arrives to an idle cluster and starts at once it ends at the same
    time under every policy. The note (when most or all runs share the value) says so.
    """
    if len(summaries) < 2:
        return None
    shared: dict[str, list[str]] = {}
    for s in summaries:
        util = s["mean_utilization"]
        if isinstance(util, str) or math.isnan(float(util)):
            continue
        shared.setdefault(f"{float(util):.3f}", []).append(str(s["policy"]))
    if not shared:
        return None
    value, names = max(shared.items(), key=lambda kv: len(kv[1]))
    if len(names) < 2 or 2 * len(names) <= len(summaries):
        return None  # a coincidence of a few runs needs no note; most or all of them does
    same = [s for s in summaries if str(s["policy"]) in names]
    all_done = all(s["unfinished"] == 0 for s in same)
    spans = {s["makespan"] for s in same}
    who = (
        "every policy"
        if len(names) == len(summaries)
        else f"{len(names)} of {len(summaries)} policies"
    )
    if all_done and len(spans) == 1:
        why = (
            "each finished every job (the same work) and its last job ended at the same time "
            f"(makespan {_duration(float(spans.pop()))}), so work / (capacity x makespan) "
            "cannot differ"
        )
    else:
        why = "the same work over about the same makespan"
    return f"note: util {value} for {who}: {why}."


def compare_table(
    summaries: Sequence[dict[str, float | int | str]], title: str, left_out: int = 0
) -> Table:
    """One row per run: jobs started and never started, waits, slowdown, makespan, utilization.

    The caption explains the columns, says how many jobs of the trace were left out because
    the cluster could never run them (``left_out``, from
    :func:`cplat.traces.feasible.screen_jobs`), and adds :func:`util_note` when runs share a
    ``util``.
    """
    caption = (
        "started / never: jobs that started, jobs that never did; done: jobs finished; "
        "wait: mean and 95th percentile and bsld: mean bounded slowdown (10 s), both over "
        "finished jobs; span: makespan, "
        "first submit to last end; util: busy resource-time / (capacity x span), so with "
        "every job finished it differs between policies only where span does; Jain: "
        "fairness of mean slowdown across groups; jobs/s: replay speed"
    )
    if left_out:
        caption += (
            f"\nnote: {left_out:,} jobs of the trace can never run on this cluster and are not "
            "in these rows (see the skipped rows of the read report)."
        )
    note = util_note(summaries)
    if note is not None:
        caption += "\n" + note
    table = Table(title=title, caption=caption, caption_justify="left")
    columns = (
        "policy",
        "started",
        "never",
        "done",
        "wait",
        "p95 wait",
        "bsld",
        "span",
        "util",
        "Jain",
        "jobs/s",
    )
    for name in columns:
        table.add_column(name, justify="left" if name == "policy" else "right", no_wrap=True)
    for s in summaries:
        table.add_row(
            str(s["policy"]),
            _fmt(s["started"]),
            f"[bold red]{_fmt(s['never_started'])}[/]" if s["never_started"] else "0",
            _fmt(s["finished"]),
            _duration(s["mean_wait"]),
            _duration(s["p95_wait"]),
            _fmt(s["mean_bounded_slowdown"], 1),
            _duration(s["makespan"]),
            _fmt(s["mean_utilization"], 3),
            _fmt(s["jain_group_slowdown"], 3),
            _rate(s["jobs_per_second"]),
        )
    return table


def write_outputs(
    runs: Sequence[Run],
    out: Path,
    extra: dict[str, object] | None = None,
    trace: str = "",
) -> list[Path]:
    """Write per-run ``jobs.parquet`` and decision logs, ``summary.json`` and the plots.

    ``extra`` (e.g. the trace reader's skipped-row counts) is stored with every run's summary;
    ``trace`` names the trace in the plots' titles (default: ``extra["trace"]``).
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
    written.extend(plot_runs(runs, out, trace or str((extra or {}).get("trace", ""))))
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


def _panel_grid(
    runs: Sequence[Run], ylabels: tuple[str, str], title: str
) -> tuple[Figure, list[tuple[Axes, Axes]]]:
    """Make a figure with a row per run and two columns, panels sharing axes per column.

    Small multiples rather than one overlay: ten policies' utilization curves drawn on one
    axes cross hundreds of times and cannot be told apart, whereas a row per policy on the
    same scales lets the eye compare shapes down each column.
    """
    import matplotlib.pyplot as plt

    rows = len(runs)
    fig, axes = plt.subplots(
        rows,
        2,
        figsize=(11, 1.0 + 1.25 * rows),
        sharex=True,
        sharey="col",
        squeeze=False,
    )
    fig.suptitle(title)
    pairs: list[tuple[Axes, Axes]] = []
    for i, run in enumerate(runs):
        left, right = axes[i][0], axes[i][1]
        left.set_title(run.name, loc="left", fontsize=9, fontweight="bold")
        for ax in (left, right):
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
        pairs.append((left, right))
    axes[0][0].set_title(ylabels[0], loc="right", fontsize=9)
    axes[0][1].set_title(ylabels[1], loc="right", fontsize=9)
    axes[-1][0].set_xlabel("time (hours)")
    axes[-1][1].set_xlabel("time (hours)")
    return fig, pairs


def run_figures(runs: Sequence[Run], trace: str = "") -> dict[str, Figure]:
    """Build the plots of :func:`plot_runs` as matplotlib figures, keyed by file name.

    ``utilization_queue.png`` and (for GPU traces) ``gpu_allocation_fragmentation.png`` have a
    row of panels per run; ``wait_cdf.png`` overlays the runs' wait-time distributions (colour
    per queue order, line style per backfilling). Every figure's title names ``trace``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def titled(what: str) -> str:
        return f"{what}\n{trace}" if trace else what

    figures: dict[str, Figure] = {}
    dim = _size_and_capacity(runs[0].result)[2] if runs else "cpu"
    fig, pairs = _panel_grid(
        runs,
        (f"{dim} utilization (binned mean)", "queued jobs"),
        titled("utilization and queue length over time, one row per policy"),
    )
    for run, (ax_u, ax_q) in zip(runs, pairs, strict=True):
        r = run.result
        size, capacity, _ = _size_and_capacity(r)
        started = r.start >= 0
        end = np.where(started & (r.end < 0), r.start.max(initial=0), r.end)
        t, u = metrics.utilization_series(r.start[started], end[started], size[started], capacity)
        centers, avg = _binned(t, u, bins=150)
        ax_u.fill_between(centers / 3600, avg, color="tab:blue", alpha=0.25, linewidth=0)
        ax_u.plot(centers / 3600, avg, color="tab:blue", linewidth=0.9)
        ax_u.set_ylim(0, 1.05)
        s = summarize(run)
        ax_u.text(
            0.99,
            0.92,
            f"util {_fmt(s['mean_utilization'], 3)}, span {_duration(s['makespan'])}",
            transform=ax_u.transAxes,
            ha="right",
            va="top",
            fontsize=7,
            bbox={"facecolor": "white", "alpha": 0.8, "linewidth": 0},
        )
        tq, q = metrics.queue_length_series(r.columns.submit, r.start)
        ax_q.step(tq / 3600, q, where="post", color="tab:red", linewidth=0.8)
        ax_q.set_ylim(bottom=0)
    fig.tight_layout()
    figures["utilization_queue.png"] = fig

    gpu_runs = [run for run in runs if len(run.result.gpu_series)]
    if gpu_runs:
        fig, pairs = _panel_grid(
            gpu_runs,
            ("GPU allocated (% of capacity)", "GPU fragmented (% of capacity)"),
            titled("GPU allocation and fragmentation over time, one row per policy"),
        )
        for run, (ax_a, ax_f) in zip(gpu_runs, pairs, strict=True):
            g = run.result.gpu_series
            cap = max(run.result.capacity_gpu_milli, 1)
            ax_a.plot(g[:, 0] / 3600, 100 * g[:, 1] / cap, color="tab:blue", linewidth=0.8)
            ax_f.plot(g[:, 0] / 3600, 100 * g[:, 2] / cap, color="tab:purple", linewidth=0.8)
            ax_a.set_ylim(bottom=0)
            ax_f.set_ylim(bottom=0)
        fig.tight_layout()
        figures["gpu_allocation_fragmentation.png"] = fig

    # One axes is readable for distributions: the CDFs are monotone and rarely cross, and
    # colour (queue order) plus line style (backfilling) tells ten runs apart.
    fig, ax = plt.subplots(figsize=(8, 5))
    orders = list(dict.fromkeys(run.name.split("+")[0] for run in runs))
    styles = {"easy": "--", "conservative": ":", "rlsched": "-."}
    for run in runs:
        r = run.result
        ok = r.start >= 0
        waits = np.sort(r.start[ok] - r.columns.submit[ok])
        if len(waits):
            order, _, backfill = run.name.partition("+")
            ax.step(
                np.maximum(waits, 1),
                np.arange(1, len(waits) + 1) / len(waits),
                label=run.name,
                color=plt.get_cmap("tab10")(orders.index(order) % 10),
                linestyle=styles.get(backfill, "-"),
                linewidth=1.1,
            )
    ax.set_xscale("log")
    ax.set_xlabel("wait (s, log scale; 0 shown as 1)")
    ax.set_ylabel("fraction of jobs")
    ax.set_title(titled("wait-time distribution (up and to the left is better)"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    figures["wait_cdf.png"] = fig
    return figures


def plot_runs(runs: Sequence[Run], out: Path, trace: str = "") -> list[Path]:
    """Write the figures of :func:`run_figures` as PNG files under ``out``."""
    import matplotlib.pyplot as plt

    paths = []
    for name, fig in run_figures(runs, trace).items():
        p = out / name
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths
