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
from cplat.traces.load import TRACE_KINDS, load_trace, parse_trace_spec
from cplat.traces.trace import Trace, nodes_parquet_path, summarize, write_parquet

__all__ = ["add_trace_parser"]


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
