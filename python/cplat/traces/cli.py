"""The ``cplat trace`` command: convert real traces to Parquet, and describe them.

``cplat trace convert KIND:PATH --out FILE.parquet [--nodes NODE_CSV] [--strict]`` writes the jobs
table (and ``FILE.nodes.parquet`` when the trace has nodes); ``cplat trace info KIND:PATH`` prints a
summary and the reader's skip counts. Kinds: ``swf``, ``openb`` (``--nodes`` adds the node list),
``dlrm`` and ``philly``. Errors are raised as :class:`~cplat.errors.InputError`; the main command
turns them into exit code 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cplat.errors import InputError
from cplat.traces.jobs import Trace, nodes_parquet_path, summarize, write_parquet

__all__ = ["TRACE_KINDS", "add_trace_parser", "load_trace", "parse_trace_spec"]

#: Trace kinds accepted in ``KIND:PATH``, with what they read.
TRACE_KINDS: dict[str, str] = {
    "swf": "Parallel Workloads Archive SWF log (plain or .gz)",
    "openb": "openb pod list (Alibaba GPU v2023) replayed in time; --nodes adds the node list",
    "dlrm": "Alibaba DLRM inference instances (GPU v2025)",
    "philly": "Philly-style per-job GPU CSV (timestamp, duration, num_gpus)",
}


def parse_trace_spec(spec: str) -> tuple[str, Path]:
    """Split ``"KIND:PATH"`` into the kind and the path.

    Raises
    ------
    InputError
        When the colon, the kind or the path is missing, or the kind is unknown.
    """
    kind, sep, path = spec.partition(":")
    kind = kind.strip().lower()
    known = ", ".join(TRACE_KINDS)
    if not sep:
        raise InputError(
            f"expected KIND:PATH (kinds: {known}), got {spec!r}", field="KIND:PATH", kind="argument"
        )
    if kind not in TRACE_KINDS:
        raise InputError(
            f"unknown trace kind {kind!r} (kinds: {known})", field="KIND:PATH", kind="argument"
        )
    if not path.strip():
        raise InputError(f"missing path after {kind!r}:", field="KIND:PATH", kind="argument")
    return kind, Path(path)


def load_trace(kind: str, path: Path, *, nodes: Path | None = None, strict: bool = False) -> Trace:
    """Read a trace of ``kind`` (see :data:`TRACE_KINDS`).

    Raises
    ------
    InputError
        For an unknown kind, ``nodes`` with a kind other than ``openb``, and any reader error.
    """
    if nodes is not None and kind != "openb":
        raise InputError(f"--nodes applies to openb traces only, not {kind}", field="--nodes")
    if kind == "swf":
        from cplat.traces.swf import read_swf

        return read_swf(path, strict=strict)
    if kind == "openb":
        from cplat.traces.openb_jobs import read_openb_jobs

        return read_openb_jobs(path, nodes, strict=strict)
    if kind == "dlrm":
        from cplat.traces.dlrm import read_dlrm

        return read_dlrm(path, strict=strict)
    if kind == "philly":
        from cplat.traces.philly import read_gpu_jobs_csv

        return read_gpu_jobs_csv(path, strict=strict)
    raise InputError(f"unknown trace kind {kind!r} (kinds: {', '.join(TRACE_KINDS)})")


def _print_report(console: Any, trace: Trace) -> None:
    from rich.table import Table

    report = trace.report
    console.print(
        f"{report.source}: {report.rows_read} rows read, {report.rows_kept} kept, "
        f"{report.rows_skipped} skipped",
        markup=False,
        highlight=False,
    )
    if report.skipped:
        table = Table(title="skipped rows", show_header=True)
        table.add_column("reason")
        table.add_column("rows", justify="right")
        for reason, count in sorted(report.skipped.items(), key=lambda kv: (-kv[1], kv[0])):
            table.add_row(reason, str(count))
        console.print(table)
        for example in report.examples:
            console.print(f"  e.g. {example}", markup=False, highlight=False)
    for warning in report.warnings:
        console.print(f"  warning: {warning}", markup=False, highlight=False)


def _cmd_convert(args: argparse.Namespace) -> int:
    from rich.console import Console

    kind, path = parse_trace_spec(args.spec)
    out = Path(args.out)
    if out.suffix != ".parquet":
        raise InputError("the output file must end in .parquet", field="--out")
    trace = load_trace(kind, path, nodes=args.nodes, strict=args.strict)
    written = write_parquet(trace, out)
    console = Console()
    _print_report(console, trace)
    for target in written:
        if trace.nodes is not None and target == nodes_parquet_path(out):
            what = f"{trace.nodes.num_rows} nodes"
        else:
            what = f"{trace.jobs.num_rows} jobs"
        console.print(f"wrote {target} ({what})", markup=False, highlight=False)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    kind, path = parse_trace_spec(args.spec)
    trace = load_trace(kind, path, nodes=args.nodes, strict=args.strict)
    console = Console()
    table = Table(title=f"{kind}: {path}", show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in summarize(trace.jobs, trace.nodes).items():
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        table.add_row(key, f"{value:,}" if numeric else str(value))
    console.print(table)
    if trace.meta:
        meta = Table(title="source", show_header=False)
        meta.add_column("key")
        meta.add_column("value")
        for key, value in trace.meta.items():
            meta.add_row(key, str(value))
        console.print(meta)
    _print_report(console, trace)
    return 0


def add_trace_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add the ``trace`` command (``convert``, ``info``) to a subparsers object.

    Each leaf parser sets ``func`` to a handler ``(argparse.Namespace) -> int``.

    Returns
    -------
    argparse.ArgumentParser
        The ``trace`` parser.
    """
    kinds = "; ".join(f"{k}: {v}" for k, v in TRACE_KINDS.items())
    trace = subparsers.add_parser(
        "trace",
        help="read real cluster traces (convert to Parquet, describe)",
        description=f"Read real traces into cplat's job and node tables. Kinds: {kinds}.",
    )
    sub = trace.add_subparsers(dest="trace_command", required=True)

    def common(parser: argparse.ArgumentParser, func: Callable[[argparse.Namespace], int]) -> None:
        parser.add_argument(
            "spec", metavar="KIND:PATH", help="trace kind and file, e.g. swf:log.swf"
        )
        parser.add_argument(
            "--nodes", type=Path, metavar="NODE_CSV", help="node list (openb traces only)"
        )
        parser.add_argument(
            "--strict", action="store_true", help="stop at the first bad row instead of skipping"
        )
        parser.set_defaults(func=func)

    convert = sub.add_parser(
        "convert",
        help="write the jobs (and nodes) as Parquet",
        description="Write the jobs table to --out and, when the trace has nodes, the nodes to "
        "the same name with .nodes.parquet.",
    )
    common(convert, _cmd_convert)
    convert.add_argument("--out", required=True, metavar="FILE.parquet", help="jobs output file")
    info = sub.add_parser("info", help="print a summary and the skipped-row counts")
    common(info, _cmd_info)
    return trace
