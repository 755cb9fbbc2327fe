"""Command line: ``cplat sim`` (trace replay), ``cplat pack`` (static packing), ``cplat trace``.

``cplat`` alone prints this help and ``cplat --version`` the version, both with exit code 0.
Errors in user input print one line naming what is at fault (the file, line and trace column;
the config field; or the command-line option) and exit with code 2.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from cplat.errors import InputError

if TYPE_CHECKING:
    from rich.console import Console

DEFAULT_OUT_DIR = Path("cplat-out")


def parse_seeds(text: str) -> list[int]:
    """Parse seeds given as ``42``, ``42-51`` or ``42,45,50`` (ranges inclusive, may mix).

    Raises
    ------
    InputError
        For anything that is not a list of non-negative integers or ranges.
    """
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(p) for p in part.split("-", 1))
                if lo > hi:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise InputError(
                f"expected seeds like 42, 42-51 or 42,45; got {text!r}", field="--seeds"
            ) from None
    if any(s < 0 for s in seeds) or not seeds:
        raise InputError(f"expected non-negative seeds; got {text!r}", field="--seeds")
    return seeds


@contextmanager
def _from_options(options: str | Mapping[str, str]) -> Iterator[None]:
    """Report errors in values given on the command line as errors of their options.

    The library names what it validates by its own field (``policy``, ``order``); a user who
    typed ``--placement nope`` should read ``option '--placement'``.

    Parameters
    ----------
    options
        The option every error inside is about, or a map from the library's field names to
        the options that carried them (errors about other fields pass unchanged).
    """
    try:
        yield
    except InputError as exc:
        if exc.source is not None:  # about a file the option named: keep its file, row, column
            raise
        flag = options if isinstance(options, str) else options.get(exc.field or "")
        if flag is None:
            raise
        raise InputError(exc.message, field=flag) from None


def _write_rows(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)


def _cmd_pack(args: argparse.Namespace) -> int:

    from cplat.pack import result_rows, run_many
    from cplat.pack.report import plot_pack, print_pack_table
    from cplat.profile import PAPER_POLICIES, policy

    console = _console()
    names = (
        list(PAPER_POLICIES)
        if args.policy == "all"
        else [p.strip() for p in args.policy.split(",")]
    )
    with _from_options("--policy"):
        profiles = [policy(n) for n in names]
    if args.tie_break != "rank":
        from dataclasses import replace

        profiles = [replace(p, tie_break=args.tie_break) for p in profiles]
        with _from_options("--tie-break"):
            for p in profiles:
                p.__post_init__()
    seeds = parse_seeds(args.seeds)
    if not args.tune >= 0:
        raise InputError(f"expected a non-negative ratio, got {args.tune}", field="--tune")

    if args.synthetic:
        from cplat.pack.synthetic import synthetic_cluster, synthetic_tasks

        if args.synthetic_nodes <= 0:
            raise InputError("expected a positive node count", field="--synthetic-nodes")
        nodes = synthetic_cluster(args.synthetic_nodes, seed=args.synthetic_seed)
        tasks = synthetic_tasks(nodes, seed=args.synthetic_seed)
        workload = "synthetic"
        out = args.out or DEFAULT_OUT_DIR / "pack-alloc.csv"
        plot = args.plot or DEFAULT_OUT_DIR / "pack.png"
    else:
        from cplat.traces import read_openb_nodes, read_openb_pods

        if args.nodes is None or args.pods is None:
            raise InputError("give --nodes and --pods, or --synthetic", field="--nodes")
        nodes = read_openb_nodes(args.nodes)
        tasks = read_openb_pods(args.pods, nodes.models)
        workload = Path(args.pods).name.split(".")[0]
        out, plot = args.out, args.plot

    console.print(
        f"[bold]cplat pack[/bold]: {workload}: {len(tasks)} tasks on {len(nodes)} nodes "
        f"({int(nodes.num_gpu.sum())} GPUs); policies {', '.join(names)}; "
        f"seeds {seeds[0]}..{seeds[-1]} ({len(seeds)}); tune {args.tune}"
    )
    started = time.perf_counter()
    runs = run_many(
        nodes, tasks, profiles, seeds, args.tune, workload_name=workload, jobs=args.jobs
    )
    elapsed = time.perf_counter() - started
    print_pack_table(runs, console)
    console.print(f"{len(runs)} runs in {elapsed:.2f} s")
    written = []
    for path, kind in (
        (out, "alloc"),
        (args.frag_out, "frag"),
        (args.frag_ratio_out, "frag_ratio"),
    ):
        if path is not None:
            _write_rows(Path(path), result_rows(runs, kind))
            written.append(str(path))
    if plot is not None:
        written.append(
            str(plot_pack(runs, plot, title=f"{workload}: unallocated and fragmented GPU"))
        )
    if written:
        console.print("wrote " + ", ".join(written))
    return 0


def _console() -> Console:
    """Return a console for results (a terminal sets the width; pipes get 120 columns)."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=120)


def _cmd_sim(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from rich.progress import Progress

    from cplat.profile import policy
    from cplat.scheduler import QueuePolicy, nodes_from_table
    from cplat.sim.report import Run, compare_table, summarize, unstarted_warning, write_outputs
    from cplat.sim.run import FaultModel, simulate

    console = _console()
    cfg = None
    if args.profile is not None:
        from cplat.config import load_scheduler_config

        cfg = load_scheduler_config(args.profile)
    if args.placement is not None:
        with _from_options("--placement"):
            placement = policy(args.placement)
    else:
        placement = cfg.placement if cfg is not None else policy("bestfit")
    if args.trace is None:
        from cplat.workload import lublin_feitelson, synthetic_cluster_nodes

        if args.synthetic_jobs <= 0 or args.synthetic_nodes <= 0:
            raise InputError("expected positive counts", field="--synthetic-jobs")
        jobs = lublin_feitelson(args.synthetic_jobs, nodes=args.synthetic_nodes, seed=args.seed)
        nodes = nodes_from_table(synthetic_cluster_nodes(args.synthetic_nodes))
        label = f"synthetic Lublin-Feitelson: {jobs.num_rows:,} jobs on {len(nodes)} nodes"
        skipped = ""
        left_out = 0
        extra: dict[str, object] = {"trace": "synthetic", "seed": args.seed}
    else:
        from cplat.traces.cluster import load_cluster
        from cplat.traces.feasible import screen_jobs
        from cplat.traces.load import load_trace, parse_trace_spec

        with _from_options("--trace"):
            kind, path = parse_trace_spec(args.trace)
        # The cluster first: a Philly-style trace cuts its wide jobs to the largest machine.
        cluster = None if args.cluster is None else load_cluster(args.cluster, strict=args.strict)
        per_machine = None
        if cluster is not None and kind == "philly" and int(cluster.num_gpu.max(initial=0)) > 0:
            per_machine = int(cluster.num_gpu.max())
        trace = load_trace(
            kind, path, nodes=args.nodes, strict=args.strict, gpus_per_machine=per_machine
        )
        if cluster is not None:
            nodes = cluster
        elif trace.nodes is not None:
            nodes = nodes_from_table(trace.nodes)
        else:
            raise InputError(
                f"the {kind} trace has no node list: give --cluster "
                "(philly:, spot:, openb: or parquet: node file, or a path)",
                field="--cluster",
            )
        # Jobs no empty cluster could hold would wait forever (and block FCFS): out, counted.
        read_warnings = len(trace.report.warnings)
        trace = screen_jobs(trace, nodes, strict=args.strict)
        jobs = trace.jobs
        label = f"{path.name}: {jobs.num_rows:,} jobs on {len(nodes)} nodes"
        report = trace.report
        extra = {
            "trace": args.trace,
            "skipped_rows": dict(report.skipped),
            "infeasible_jobs": int(trace.meta.get("infeasible_jobs", 0)),
        }
        skipped = (
            f"; skipped {sum(report.skipped.values()):,} rows ({report.summary()})"
            if report.skipped
            else ""
        )
        for note in report.warnings[read_warnings:]:  # the screen's; the reader's are above
            print(f"cplat sim: warning: {note}", file=sys.stderr)
        left_out = int(trace.meta.get("infeasible_jobs", 0))
        if left_out:
            reasons = ", ".join(
                f"{reason.removeprefix('infeasible: ')} {count:,}"
                for reason, count in sorted(report.skipped.items())
                if reason.startswith("infeasible: ")
            )
            print(
                f"cplat sim: warning: {left_out:,} jobs can never run on this cluster and are "
                f"left out ({reasons}); --strict makes this an error",
                file=sys.stderr,
            )
    base = cfg.queue if cfg is not None else QueuePolicy()
    default_orders = base.order if cfg is not None else "fcfs,sjf,f1,wfp3,unicep"
    orders = [o.strip() for o in (args.compare or args.policy or default_orders).split(",")]
    if cfg is not None:
        default_backfill = base.backfill
    else:
        default_backfill = "none,easy" if (args.compare is None and args.policy is None) else "none"
    backfills = [b.strip() for b in (args.backfill or default_backfill).split(",")]
    checkpoint = cfg.checkpoint if cfg is not None else None
    if args.checkpoint_interval is not None:
        from cplat.scheduler import Checkpointing

        with _from_options("--checkpoint-interval"):
            checkpoint = Checkpointing(args.checkpoint_interval, args.checkpoint_cost or 0)
    quotas = cfg.quotas if cfg is not None else None
    queue_sort_spec = None
    if args.queue_sort is not None or (cfg is not None and cfg.queue_sort is not None):
        from cplat.policy.fairshare import make_queue_sort, parse_queue_sort_spec

        if args.queue_sort is not None:
            with _from_options("--queue-sort"):
                queue_sort_spec = parse_queue_sort_spec(args.queue_sort)
                make_queue_sort(queue_sort_spec[0], nodes, jobs, queue_sort_spec[1])  # validate
        else:
            assert cfg is not None and cfg.queue_sort is not None
            options = {k: v for k, v in cfg.queue_sort.items() if k != "name"}
            queue_sort_spec = (str(cfg.queue_sort["name"]), options)
            make_queue_sort(queue_sort_spec[0], nodes, jobs, queue_sort_spec[1])  # validate now
        orders = ["priority"]  # the plugin sets the priorities
    # Only the options actually given: values from --profile were checked when it was read.
    given = {
        "order": "--compare" if args.compare else "--policy" if args.policy else None,
        "backfill": "--backfill" if args.backfill else None,
        "preemption": "--preemption" if args.preemption else None,
    }
    # The profile's policy travels whole: only what the command line sets is replaced, so a
    # field added to QueuePolicy reaches the simulator without an edit here.
    with _from_options({k: v for k, v in given.items() if v is not None}):
        queues = [
            replace(
                base,
                order=o,
                backfill=b,
                lock_head=args.lock_head or base.lock_head,
                preemption=args.preemption or base.preemption,
            )
            for o in orders
            for b in backfills
        ]
    faults = None
    if args.mtbf is not None or args.mttr is not None:
        if args.mtbf is None or args.mttr is None or args.mtbf <= 0 or args.mttr <= 0:
            raise InputError("give both --mtbf and --mttr, positive", field="--mtbf")
        faults = FaultModel(args.mtbf, args.mttr, seed=args.seed)
    if args.tick is not None and args.tick <= 0:
        raise InputError("expected a positive number of seconds", field="--tick")
    console.print(f"[bold]cplat sim[/bold]: {label}{skipped}")
    runs: list[Run] = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("simulating", total=len(queues) * jobs.num_rows)
        for q in queues:
            progress.update(task, description=q.name)
            queue_sort = None
            if queue_sort_spec is not None:  # a fresh plugin per run: it keeps usage state
                queue_sort = make_queue_sort(queue_sort_spec[0], nodes, jobs, queue_sort_spec[1])
            t0 = time.perf_counter()
            result = simulate(
                jobs,
                nodes,
                placement=placement,
                queue=q,
                seed=args.seed,
                horizon=args.horizon,
                faults=faults,
                tick=args.tick,
                record_log=args.log,
                queue_sort=queue_sort,
                quotas=quotas,
                checkpoint=checkpoint,
            )
            name = q.name if queue_sort_spec is None else f"{queue_sort_spec[0]}+{q.backfill}"
            runs.append(Run(name, result, time.perf_counter() - t0))
            progress.advance(task, jobs.num_rows)
    summaries = [summarize(r) for r in runs]
    # The banner above already names the trace; the table's title says what the rows are.
    console.print(compare_table(summaries, title="results per queue policy", left_out=left_out))
    for run in runs:
        warning = unstarted_warning(run)
        if warning is not None:
            print(f"cplat sim: {warning}", file=sys.stderr)
    written = write_outputs(runs, args.out, extra, trace=label)
    console.print(
        "wrote " + ", ".join(str(p) for p in written[-3:]) + f" (and {len(written) - 3} more)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the ``cplat`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="cplat", description="cplat: scheduling for AI/ML clusters"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    # Not required: bare ``cplat`` prints the help (main) rather than a usage error.
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sim = sub.add_parser(
        "sim",
        help="replay a job trace through the scheduler (discrete-event simulation)",
        description="Replay a trace (or the built-in Lublin-Feitelson workload) through cplat's "
        "scheduler and compare queue orders and backfilling.",
    )
    sim.add_argument(
        "--trace", metavar="KIND:PATH", help="swf:, openb:, dlrm:, philly: or parquet: file"
    )
    sim.add_argument("--nodes", type=Path, metavar="NODE_CSV", help="node list of an openb trace")
    sim.add_argument(
        "--cluster",
        metavar="[KIND:]FILE",
        help="cluster: philly:, spot:, openb: or parquet: node file (a bare path is recognised "
        "by its suffix or header)",
    )
    sim.add_argument(
        "--policy", metavar="ORDER", help="queue order: fcfs sjf priority wfp3 unicep f1"
    )
    sim.add_argument("--compare", metavar="O1,O2", help="queue orders to compare in one table")
    sim.add_argument("--backfill", metavar="B[,B]", help="none, easy, conservative, rlsched")
    sim.add_argument(
        "--queue-sort",
        metavar="NAME[:K=V,...]",
        help="queue-sort plugin setting priorities (multifactor, fairshare, drf; options like "
        "fairshare:account=queue,half_life=3600,shares.A=2); implies --policy priority",
    )
    sim.add_argument("--placement", help="placement policy (cplat pack names; default bestfit)")
    sim.add_argument("--profile", type=Path, metavar="FILE.toml", help="scheduler profile file")
    sim.add_argument("--preemption", help="none, priority, reclaim or both")
    sim.add_argument("--checkpoint-interval", type=int, metavar="SECONDS")
    sim.add_argument("--checkpoint-cost", type=int, metavar="SECONDS")
    sim.add_argument("--lock-head", action="store_true", help="a blocked head keeps its place")
    sim.add_argument("--seed", type=int, default=0, help="seed (workload generator, ties, faults)")
    sim.add_argument("--horizon", type=int, metavar="SECONDS", help="stop the replay at this time")
    sim.add_argument(
        "--mtbf", type=float, metavar="SECONDS", help="node mean time between failures"
    )
    sim.add_argument("--mttr", type=float, metavar="SECONDS", help="node mean time to repair")
    sim.add_argument("--tick", type=int, metavar="SECONDS", help="schedule only every N seconds")
    sim.add_argument("--strict", action="store_true", help="fail on the first bad trace row")
    sim.add_argument("--log", action="store_true", help="write each run's decision log")
    sim.add_argument("--synthetic-jobs", type=int, default=10_000, metavar="N")
    sim.add_argument("--synthetic-nodes", type=int, default=256, metavar="N")
    sim.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR / "sim", metavar="DIR")
    sim.set_defaults(func=_cmd_sim)
    pack = sub.add_parser(
        "pack",
        help="static packing experiment (FGD paper protocol)",
        description="Place tasks one by one, never releasing, and report how much GPU is left "
        "unallocated and fragmented as the arrived workload grows.",
    )
    src = pack.add_argument_group("input")
    src.add_argument(
        "--synthetic", action="store_true", help="use the built-in openb-like generator"
    )
    src.add_argument(
        "--synthetic-nodes",
        type=int,
        default=300,
        metavar="N",
        help="nodes to generate (default 300)",
    )
    src.add_argument(
        "--synthetic-seed", type=int, default=0, metavar="S", help="generator seed (default 0)"
    )
    src.add_argument("--nodes", type=Path, metavar="NODE_CSV", help="node list (openb format)")
    src.add_argument("--pods", type=Path, metavar="POD_CSV", help="pod list (openb format)")
    pack.add_argument(
        "--policy", default="all", help="policies, comma separated, or 'all' (default)"
    )
    pack.add_argument("--seeds", default="42-51", help="seeds: 42, 42-51 or 42,45 (default 42-51)")
    pack.add_argument(
        "--tune", type=float, default=1.3, help="tune total GPU request to this x capacity"
    )
    pack.add_argument(
        "--tie-break",
        choices=("rank", "random"),
        default="rank",
        help="tie rule between equal nodes",
    )
    pack.add_argument(
        "--out", type=Path, metavar="ALLOC.csv", help="allocation curves (published format)"
    )
    pack.add_argument("--frag-out", type=Path, metavar="FRAG.csv", help="fragmentation curves")
    pack.add_argument(
        "--frag-ratio-out", type=Path, metavar="RATIO.csv", help="fragmentation ratio curves"
    )
    pack.add_argument("--plot", type=Path, metavar="PNG", help="plot of the curves")
    pack.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="parallel runs (default: cores)"
    )
    pack.set_defaults(func=_cmd_pack)
    from cplat.cli.traces import add_trace_parser

    add_trace_parser(sub)
    from cplat.cli.jobs import add_job_commands
    from cplat.cli.service import add_service_commands

    add_service_commands(sub)
    add_job_commands(sub)
    from cplat.cli.hpo import add_hpo_commands

    add_hpo_commands(sub)
    from cplat.cli.tracking import add_tracking_commands

    add_tracking_commands(sub)
    from cplat.cli.reservations import add_reservation_commands

    add_reservation_commands(sub)
    from cplat.benchmarks import add_bench_command

    add_bench_command(sub)
    return parser


def _version() -> str:
    """Return the installed distribution's version (or the source tree's, when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cplat")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cplat`` command.

    ``cplat`` with no command prints the help and returns 0, like ``cplat --help``; a usage
    error (an unknown command or option) returns 2, as does an error in the input.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args))
    except InputError as exc:
        print(f"cplat {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cplat: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - last line of defence: no traceback for users
        if os.environ.get("CPLAT_DEBUG"):
            raise
        print(
            f"cplat {args.command}: internal error: {type(exc).__name__}: {exc} "
            "(set CPLAT_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 1
