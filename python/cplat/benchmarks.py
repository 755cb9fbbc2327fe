"""Benchmark figures, their targets, and the regression gate over pytest-benchmark JSON.

The benchmark suite (``bench/`` of a source checkout, run with
``python -m pytest bench/ --benchmark-only --benchmark-json=FILE``) records one or more
*figures* per benchmark in the JSON's ``extra_info``: the figure's median value and, for gated
figures, the median seconds of the measured code and of a fixed naive baseline timed in the
same process, interleaved round by round. Absolute values depend on the machine, so they are
only reported against their targets; the gate is on the ratio ``baseline / subject`` (how
many times faster than the baseline the code runs), which a slow or busy machine moves far
less. A gated figure regresses when its ratio falls below ``ratio_target * (1 - tolerance)``.

The ratio targets are the ratios measured on the reference machine (a 2-core AMD EPYC VM)
when the figure was added; raising or lowering one is a deliberate edit of this table. The
baselines themselves (``bench/reference.py``) never change with cplat's code.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cplat.errors import InputError

#: Default tolerance of a gated ratio: 2-core CI machines are shared and noisy.
DEFAULT_TOLERANCE = 0.4


@dataclass(frozen=True)
class Figure:
    """One benchmark figure as the README quotes it.

    Attributes
    ----------
    key : str
        Identifier the benchmark records in its JSON ``extra_info``.
    title : str
        The figure's wording in the README tables.
    unit : str
        Unit of the value (``"s"``, ``"ms"``, ``"MB"`` or a rate such as ``"placements/s"``).
    higher_is_better : bool
        Direction of the absolute target.
    target : float or None
        The absolute target (machine-dependent: reported, never gated).
    ratio_target : float or None
        Expected ``baseline / subject`` time ratio; None for figures that are only reported.
    tolerance : float
        Fraction of ``ratio_target`` a run may lose before it counts as a regression.
    baseline : str
        What the figure is compared with.
    """

    key: str
    title: str
    unit: str
    higher_is_better: bool
    target: float | None
    ratio_target: float | None = None
    tolerance: float = DEFAULT_TOLERANCE
    baseline: str = ""

    @property
    def gated(self) -> bool:
        """Whether a regression of this figure fails the suite."""
        return self.ratio_target is not None

    @property
    def ratio_floor(self) -> float | None:
        """The lowest ratio that still passes."""
        if self.ratio_target is None:
            return None
        return self.ratio_target * (1.0 - self.tolerance)


NUMPY_REF = "numpy best-fit reference loop"
PYTHON_REF = "pure-Python FCFS reference loop"
MLFLOW_REF = "mlflow server (SQLite), same client calls"

#: Every figure of the suite, in the order of the table. Ratio targets: the median ratio of
#: four runs (three quick, one full) on the reference VM while other jobs shared its 2 cores.
#: Figures over the same work as their baseline (engine) keep 40 % tolerance; those against
#: the fixed baseline, or single-shot and sub-millisecond ones, 50 %. The store (disk flush
#: times swing the baseline 5x between runs), the service (separate processes over loopback)
#: and runs on all cores are reported only.
FIGURES: tuple[Figure, ...] = (
    Figure("engine.bestfit_rate", "BestFit single-GPU placements/s, 10,000 nodes x 8 GPUs, 1 core",
           "placements/s", True, 20_000, 1.7, baseline=NUMPY_REF),
    Figure("engine.fgd_rate", "FGD single-GPU placements/s, 10,000 nodes x 8 GPUs, 1 core",
           "placements/s", True, 5_000, 1.5, baseline=NUMPY_REF),
    Figure("engine.random_rate", "Random single-GPU placements/s, 10,000 nodes x 8 GPUs, 1 core",
           "placements/s", True, None, 2.3, baseline=NUMPY_REF),
    Figure("engine.fgd_openb_run", "one FGD static packing run, openb default (tuned to 1.3x)",
           "s", False, 2.0, 3.4, baseline=NUMPY_REF),
    Figure("engine.openb_60_runs", "60 runs (6 policies x 10 seeds) on openb default, all cores",
           "s", False, 600.0 / 9),
    # The goal for Python scorers is "within 2x of native": the floor of this ratio
    # (native time / numba time) is 0.5, whatever the machine.
    Figure("research.pyscorer_rate", "numba BestFit scorer placements/s, openb, 1 core",
           "placements/s", True, None, 0.7, 2.0 / 7.0, "native BestFit, same placements"),
    Figure("sim.easy_rate", "FCFS+EASY replay of Lublin-Feitelson jobs, 1,024 nodes, 1 core",
           "jobs/s", True, 20_000, 0.022, 0.5, PYTHON_REF),
    Figure("sim.easy_rss", "FCFS+EASY replay peak memory (500,000 jobs; 100,000 quick)",
           "MB", False, 2048),
    # The deep-queue trace (cplat.traces.deep_queue, RICC-shaped): 447,794 jobs (60,000 quick)
    # on 1,024 nodes x 8 cores, thousands waiting; the goals are 40,000 and 10,000 jobs/s.
    # EASY is exact; conservative plans with Slurm's default bounds (SLURM_BACKFILL). Ratio
    # targets: one quick run on the reference VM (0.093 and 0.055).
    Figure("sim.deep_easy_rate", "FCFS+EASY replay of the deep-queue trace, 8,192 cores, 1 core",
           "jobs/s", True, 40_000, 0.09, 0.5, PYTHON_REF),
    Figure("sim.deep_conservative_rate",
           "FCFS+conservative (Slurm bounds) replay of the deep-queue trace, 8,192 cores, 1 core",
           "jobs/s", True, 10_000, 0.05, 0.5, PYTHON_REF),
    Figure("sim.deep_rss", "deep-queue replay peak memory, EASY and conservative",
           "MB", False, 2048),
    Figure("sim.openb_replay", "openb time-driven replay (read + FGD placement), 8,152 pods",
           "s", False, 5.0, 0.029, 0.5, PYTHON_REF),
    Figure("policies.victim_search", "victim search: 1,000 nodes, 10,000 running jobs",
           "ms", False, 100.0, 70.0, 0.5, PYTHON_REF),
    Figure("policies.easy_cycle", "EASY cycle: 10,000 pending jobs x 10,000 nodes",
           "ms", False, 1000.0, 0.37, 0.5, PYTHON_REF),
    Figure("policies.quota_admissions", "quota admissions: 1,000 projects in one cohort",
           "admissions/s", True, 1000.0, 0.55, 0.5, PYTHON_REF),
    Figure("gang.greedy", "greedy topology-aware placement, 1,024-GPU gang, 2,000 nodes",
           "ms", False, 10.0, 110.0, 0.5, NUMPY_REF),
    Figure("gang.cpsat", "CP-SAT for the same gang (greedy hint; never worse than greedy)",
           "s", False, 1.0),
    Figure("store.sqlite_rate", "store create_jobs from 32 coroutines, SQLite",
           "calls/s", True, 1000.0),
    Figure("store.postgres_rate", "store create_jobs from 32 coroutines, PostgreSQL",
           "calls/s", True, 1000.0),
    Figure("service.submit_rate", "service durable job submits/s, 32 clients, SQLite",
           "submits/s", True, 1000.0),
    Figure("service.submit_p99", "service submit latency p99", "ms", False, 50.0),
    Figure("service.to_running", "service submit -> RUNNING on an idle node, median",
           "ms", False, 100.0),
    Figure("live.register", "live cluster: 10,000 registrations + first build",
           "ms", False, None, 0.4, 0.5, PYTHON_REF),
    Figure("live.first_cycle", "live cluster: cycle placing 10,000 pending jobs",
           "ms", False, None, 0.015, 0.5, PYTHON_REF),
    Figure("live.rebuild", "live cluster: node joins, rebuild around the running jobs",
           "ms", False, None, 0.025, 0.5, PYTHON_REF),
    # Same-run ratios against `mlflow server` (SQLite) under the same mlflow client calls; the
    # issue's goal is 5x on each. The client's own protobuf work bounds the client-call ratios.
    # Targets: medians of three quick runs on the reference VM while other jobs shared it.
    Figure("tracking.log_batch", "mlflow client log_batch, 1,000,000 points (100,000 quick)",
           "points/s", True, None, 5.0, 0.5, MLFLOW_REF),
    Figure("tracking.history", "mlflow client metric history, 100,000 points (10,000 quick)",
           "ms", False, 100.0, 2.6, 0.5, MLFLOW_REF),
    Figure("tracking.history_http", "the same history as bare HTTP requests",
           "ms", False, 100.0, 10.0, 0.5, MLFLOW_REF),
    Figure("tracking.search_runs", "mlflow client search_runs, 10,000 runs (1,000 quick)",
           "ms", False, None, 3.0, 0.5, MLFLOW_REF),
    Figure("tracking.search_models", "mlflow client registry search, 1,000 models (100 quick)",
           "ms", False, None, 3.5, 0.5, MLFLOW_REF),
)  # fmt: skip


def figure(key: str) -> Figure:
    """Return the registered figure ``key``.

    Raises
    ------
    KeyError
        If no figure has that key.
    """
    for f in FIGURES:
        if f.key == key:
            return f
    raise KeyError(f"no benchmark figure {key!r}")


@dataclass(frozen=True)
class Row:
    """One line of the comparison table.

    Attributes
    ----------
    figure : Figure
        The figure.
    value : float or None
        Its measured median (None when it did not run).
    ratio : float or None
        Measured ``baseline / subject`` time ratio (gated figures).
    status : str
        ``pass``, ``REGRESSED``, ``report``, ``skipped``, ``not run`` or ``MISSING``.
    note : str
        Why (skip reason, what is missing), or empty.
    """

    figure: Figure
    value: float | None
    ratio: float | None
    status: str
    note: str = ""

    @property
    def failed(self) -> bool:
        """Whether this row fails the gate."""
        return self.status in ("REGRESSED", "MISSING")

    @property
    def target_met(self) -> bool | None:
        """Whether the absolute target is met (None without a target or a value)."""
        t, v = self.figure.target, self.value
        if t is None or v is None:
            return None
        return v >= t if self.figure.higher_is_better else v <= t


def _number(entry: Mapping[str, Any], name: str, where: str) -> float | None:
    raw = entry.get(name)
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise InputError(f"{where}: field {name!r} is not a finite number: {raw!r}")
    return float(raw)


def measurements(doc: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    """Figures recorded in a pytest-benchmark JSON document, by key.

    Parameters
    ----------
    doc : mapping
        The parsed ``--benchmark-json`` output.

    Returns
    -------
    dict
        ``key -> {"value", "subject_s", "baseline_s"}``.

    Raises
    ------
    InputError
        If the document or a recorded figure is malformed, or a figure appears twice.
    """
    benches = doc.get("benchmarks")
    if not isinstance(benches, list):
        raise InputError("benchmark JSON: no 'benchmarks' list (not pytest-benchmark output?)")
    out: dict[str, dict[str, float | None]] = {}
    for bench in benches:
        name = str(bench.get("name", "?")) if isinstance(bench, dict) else "?"
        extra = bench.get("extra_info", {}) if isinstance(bench, dict) else None
        if not isinstance(extra, dict):
            raise InputError(f"benchmark {name}: 'extra_info' is not an object")
        figs = extra.get("figures", [])
        if not isinstance(figs, list):
            raise InputError(f"benchmark {name}: 'extra_info.figures' is not a list")
        for entry in figs:
            if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
                raise InputError(f"benchmark {name}: a figure entry has no 'key'")
            key = entry["key"]
            where = f"benchmark {name}, figure {key}"
            if key in out:
                raise InputError(f"{where}: recorded twice")
            out[key] = {
                "value": _number(entry, "value", where),
                "subject_s": _number(entry, "subject_s", where),
                "baseline_s": _number(entry, "baseline_s", where),
            }
    return out


def evaluate(doc: Mapping[str, Any], figures: Sequence[Figure] = FIGURES) -> list[Row]:
    """Compare a benchmark JSON document with the figures' targets.

    Parameters
    ----------
    doc : mapping
        The parsed ``--benchmark-json`` output; its optional ``cplat`` section (written by
        the suite's conftest) lists skipped figures with their reasons and deselected ones.
    figures : sequence of Figure
        The figures expected (default: all of :data:`FIGURES`).

    Returns
    -------
    list of Row
        One row per figure, in order. A gated figure without a result that was neither
        skipped nor deselected is ``MISSING``; one whose ratio is below its floor, or that
        lacks the timings to compute one, is ``REGRESSED``/``MISSING``.
    """
    found = measurements(doc)
    meta = doc.get("cplat", {})
    meta = meta if isinstance(meta, dict) else {}
    skipped = meta.get("skipped", {})
    skipped = skipped if isinstance(skipped, dict) else {}
    deselected = set(meta.get("deselected", []) or [])
    known = {f.key for f in figures}
    rows: list[Row] = []
    for fig in figures:
        m = found.get(fig.key)
        if m is None:
            if fig.key in skipped:
                rows.append(Row(fig, None, None, "skipped", str(skipped[fig.key])))
            elif fig.key in deselected:
                rows.append(Row(fig, None, None, "not run"))  # deselected (-k): no note
            else:
                rows.append(
                    Row(fig, None, None, "MISSING", "no result in the JSON (did its test fail?)")
                )
            continue
        value = m["value"]
        if not fig.gated:
            rows.append(Row(fig, value, None, "report"))
            continue
        subject, base = m["subject_s"], m["baseline_s"]
        if subject is None or base is None or subject <= 0 or base <= 0:
            rows.append(
                Row(fig, value, None, "MISSING", "no subject/baseline timings to form a ratio")
            )
            continue
        ratio = base / subject
        floor = fig.ratio_floor
        assert floor is not None  # gated
        if ratio < floor:
            note = (
                f"ratio {ratio:.3g} < floor {floor:.3g} "
                f"({fig.ratio_target:g} - {fig.tolerance:.0%})"
            )
            rows.append(Row(fig, value, ratio, "REGRESSED", note))
        else:
            rows.append(Row(fig, value, ratio, "pass"))
    for key in sorted(set(found) - known):
        rows.append(
            Row(Figure(key, key, "", True, None), found[key]["value"], None, "report",
                "not a registered figure")
        )  # fmt: skip
    return rows


def format_value(value: float | None, unit: str) -> str:
    """Return ``value`` with its unit as the table shows it."""
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
    if unit == "ms":
        return f"{value:.2f} ms" if value < 10 else f"{value:,.0f} ms"
    if unit == "MB":
        return f"{value:,.0f} MB"
    return f"{value:,.0f} {unit}".rstrip()


def format_target(fig: Figure) -> str:
    """Return the absolute target as the README writes it (``>= 20,000 placements/s``)."""
    if fig.target is None:
        return "-"
    return f"{'>=' if fig.higher_is_better else '<='} {format_value(fig.target, fig.unit)}"


def format_table(rows: Sequence[Row]) -> str:
    """Return the comparison table: figure, median, target, met, ratio (floor), status."""
    head = ("figure", "median", "target", "met", "vs baseline (floor)", "status")
    lines: list[tuple[str, ...]] = [head]
    notes: list[str] = []
    for r in rows:
        met = {True: "yes", False: "no", None: "-"}[r.target_met]
        if r.figure.gated:
            floor = r.figure.ratio_floor
            got = "-" if r.ratio is None else f"{r.ratio:.3g}x"
            ratio = f"{got} (>= {floor:.3g}x)"
        else:
            ratio = "-"
        status = r.status
        if r.note:
            notes.append(f"{r.figure.key}: {r.note}")
            status += f" [{len(notes)}]"
        lines.append(
            (r.figure.title, format_value(r.value, r.figure.unit), format_target(r.figure),
             met, ratio, status)
        )  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for n, line in enumerate(lines):
        cells = [line[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(line[1:5], widths[1:5], strict=True)]
        out.append("  ".join(cells + [line[5]]).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    out += [f"[{i}] {n}" for i, n in enumerate(notes, 1)]
    return "\n".join(out)


def load(path: Path) -> dict[str, Any]:
    """Read a ``--benchmark-json`` file.

    Raises
    ------
    InputError
        If the file is missing or not a JSON object.
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{path}: cannot read the benchmark results: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: line {exc.lineno}: not JSON: {exc.msg}") from None
    if not isinstance(doc, dict):
        raise InputError(f"{path}: not a JSON object")
    return doc


def report(doc: Mapping[str, Any], out: Any = None) -> int:
    """Print the comparison table of ``doc``; return 1 if any figure failed the gate, else 0."""
    rows = evaluate(doc)
    stream = out if out is not None else sys.stdout
    meta = doc.get("cplat", {})
    if isinstance(meta, dict) and meta.get("machine"):
        mode = "quick" if meta.get("quick") else "full"
        print(f"machine: {meta['machine']} ({mode} mode)", file=stream)
    print(format_table(rows), file=stream)
    failed = [r.figure.key for r in rows if r.failed]
    if failed:
        print(f"benchmark gate FAILED: {', '.join(failed)}", file=stream)
        return 1
    print("benchmark gate passed", file=stream)
    return 0


def compare_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bench/compare.py``: gate a ``--benchmark-json`` file.

    Returns
    -------
    int
        0 when every gated figure passes, 1 on a regression or a missing figure, 2 on bad
        input.
    """
    ap = argparse.ArgumentParser(description="compare benchmark results with their targets")
    ap.add_argument("results", type=Path, help="pytest --benchmark-json output")
    args = ap.parse_args(argv)
    try:
        return report(load(args.results))
    except InputError as exc:
        print(f"compare: error: {exc}", file=sys.stderr)
        return 2


def find_suite(explicit: Path | None) -> Path:
    """Locate the ``bench/`` suite: ``explicit``, ``./bench`` or beside the sources.

    Raises
    ------
    InputError
        If none holds the suite's ``conftest.py``.
    """
    here = Path(__file__).resolve()
    candidates = [explicit] if explicit else [Path.cwd() / "bench", here.parents[2] / "bench"]
    for c in candidates:
        if c is not None and (c / "conftest.py").is_file():
            return c
    where = ", ".join(str(c) for c in candidates)
    raise InputError(
        f"no benchmark suite (bench/conftest.py) at {where}: run from a cplat source "
        "checkout or pass --suite DIR"
    )


def _cmd_bench(args: argparse.Namespace) -> int:
    import importlib.util

    suite = find_suite(args.suite)
    for module in ("pytest", "pytest_benchmark"):
        if importlib.util.find_spec(module) is None:
            raise InputError(f"needs {module}: pip install '.[test]' (the test extra)")
    out = Path(args.json).resolve()  # pytest runs from the suite's parent folder
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pytest", str(suite), "--benchmark-only",
           f"--benchmark-json={out}", "-p", "no:cacheprovider", "-q"]  # fmt: skip
    if args.quick:
        cmd.append("--quick")
    if args.select:
        cmd += ["-k", args.select]
    if out.exists():
        out.unlink()  # a stale file must not pass for this run's results
    rc = subprocess.call(cmd, cwd=suite.parent)
    if not out.is_file():
        raise InputError(f"the suite wrote no results to {out} (pytest exit code {rc})")
    print(f"\nresults: {out}")
    gate = report(load(out))
    return 1 if rc != 0 or gate != 0 else 0


def add_bench_command(sub: Any) -> None:
    """Add ``cplat bench`` to the ``cplat`` subcommands ``sub``."""
    p = sub.add_parser(
        "bench",
        help="run the benchmark suite and compare with the targets",
        description="Run bench/ under pytest-benchmark, save the JSON and print each figure's "
        "median, target and status; exit 1 when a figure regresses against its same-run "
        "baseline beyond its tolerance.",
    )
    p.add_argument("--quick", action="store_true", help="fewer rounds and smaller runs (CI)")
    p.add_argument("--suite", type=Path, metavar="DIR", help="the bench/ folder to run")
    p.add_argument(
        "--json",
        default="cplat-out/bench.json",
        metavar="FILE",
        help="where to save the results (default cplat-out/bench.json)",
    )
    p.add_argument("-k", dest="select", metavar="EXPR", help="run only the matching benchmarks")
    p.set_defaults(func=_cmd_bench)
