"""``cplat job``: submit, list, inspect, cancel and follow jobs on a running cplat service.

The verbs talk to ``cplat serve`` through `cplat.client.Client`; ``--server`` and ``--token``
default to ``CPLAT_SERVER`` and ``CPLAT_TOKEN``. Failures print one line,
``error: <message> (field: <field>)``, on stderr and exit with 2 for a request the service
refused (4xx) or bad input, 1 for an unreachable service or a server error (5xx).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, TextIO, cast

from cplat.client import (
    DEFAULT_SERVER,
    ApiError,
    Client,
    Job,
    LogChunk,
    ServerUnreachableError,
    WaitTimeoutError,
)
from cplat.errors import InputError

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "add_job_commands",
    "exit_status",
    "main",
    "parse_cpu",
    "parse_duration",
    "parse_env",
    "parse_gpu_share",
    "parse_memory",
    "queue_ordered",
]

#: Seconds between polls of ``submit --wait`` and ``logs --follow``.
POLL_INTERVAL = 0.5

Command = Callable[[argparse.Namespace], int]

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
# Binary and bare suffixes alike are powers of 1024: ``16G`` means 16 GiB, as in Slurm.
_MEMORY_UNITS = {"k": Decimal(1) / 1024, "m": Decimal(1), "g": Decimal(1024), "t": Decimal(1024**2)}
_MEMORY_RE = re.compile(rf"({_NUMBER})\s*(?:([kmgt])(?:ib|i|b)?)?", re.IGNORECASE)
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_PART_RE = re.compile(rf"({_NUMBER})([smhd])")
_NAME_BAD_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME = 128


# Value parsers -------------------------------------------------------------------------------
def _decimal(text: str, field: str, expected: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise InputError(f"expected {expected}, got {text!r}", field=field) from None
    if not value.is_finite() or value < 0:
        raise InputError(f"expected {expected}, got {text!r}", field=field)
    return value


def parse_memory(text: str) -> int:
    """Parse a memory size into MiB: ``16Gi``, ``512Mi``, ``1.5Ti``, ``2048`` (plain MiB).

    Suffixes ``K``, ``M``, ``G``, ``T`` count in powers of 1024 with or without ``i`` and
    ``B`` (``16G`` = ``16Gi`` = ``16GiB``), in any case. Fractions of a MiB round up.

    Raises
    ------
    InputError
        For anything else, or a negative size.
    """
    match = _MEMORY_RE.fullmatch(text.strip())
    if match is None:
        raise InputError(
            f"expected a size like 16Gi, 512Mi or 2048 (MiB), got {text!r}", field="--memory"
        )
    number, unit = match.groups()
    mib = Decimal(number) * _MEMORY_UNITS[(unit or "m").lower()]
    return math.ceil(mib)


def _seconds(text: str, field: str) -> Decimal:
    spec = text.strip().lower()
    expected = f"expected a duration like 3600, 30m, 2h or 1h30m, got {text!r}"
    if re.fullmatch(_NUMBER, spec):
        seconds = Decimal(spec)
    elif re.fullmatch(rf"(?:{_DURATION_PART_RE.pattern})+", spec):
        seconds = sum(
            (Decimal(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART_RE.findall(spec)),
            Decimal(0),
        )
    else:
        raise InputError(expected, field=field)
    if seconds <= 0:
        raise InputError(expected, field=field)
    return seconds


def parse_duration(text: str, field: str = "--max-runtime") -> int:
    """Parse a duration into whole seconds: ``3600``, ``90s``, ``30m``, ``2h``, ``1d``, ``1h30m``.

    Fractions of a second round up.

    Raises
    ------
    InputError
        For anything else, or a duration that is not positive; it names ``field``.
    """
    return math.ceil(_seconds(text, field))


def parse_cpu(text: str) -> int:
    """Parse a CPU request in cores (``4``, ``0.5``) or milli-cores (``500m``) into milli.

    Fractions of a milli-core round up, so a non-zero request never becomes zero.

    Raises
    ------
    InputError
        For anything else, or a negative request.
    """
    spec = text.strip()
    expected = "a number of cores like 4, 0.5 or 500m"
    if spec.endswith("m"):
        return math.ceil(_decimal(spec[:-1], "--cpu", expected))
    return math.ceil(_decimal(spec, "--cpu", expected) * 1000)


def parse_gpu_share(text: str) -> int:
    """Parse the share of one GPU each task needs (``0.5``) into milli-GPU (``500``).

    Raises
    ------
    InputError
        For a value outside (0, 1].
    """
    expected = "a share of one GPU in (0, 1], like 0.5"
    share = _decimal(text.strip(), "--gpu-share", expected)
    if not 0 < share <= 1:
        raise InputError(f"expected {expected}, got {text!r}", field="--gpu-share")
    return math.ceil(share * 1000)


def parse_env(items: Iterable[str]) -> dict[str, str]:
    """Parse ``K=V`` items into an environment (later items win; ``V`` may hold ``=``).

    Raises
    ------
    InputError
        For an item without ``=`` or with an empty name.
    """
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"expected NAME=VALUE, got {item!r}", field="--env")
        env[key] = value
    return env


def exit_status(job: Job) -> int:
    """Return the process exit status that stands for a finished job.

    The job's own exit code when it has one in 0-255; ``128 + N`` for a task killed by
    signal N (reported as ``-N``); otherwise 0 for SUCCEEDED and 1 for anything else.
    """
    code = job.get("exit_code")
    if code is None:
        return 0 if job["state"] == "SUCCEEDED" else 1
    if code < 0:
        return min(128 - code, 255)
    if code > 255 or (code == 0 and job["state"] != "SUCCEEDED"):
        return 1  # a status the shell cannot carry, or a job that failed for another reason
    return code


def _default_name(command: Sequence[str]) -> str:
    """Name a job after its program (``python`` for ``python train.py``)."""
    program = os.path.basename(command[0].split()[0]) if command[0].split() else ""
    name = _NAME_BAD_CHARS.sub("-", program).strip("-")[:_MAX_NAME]
    return name or "job"


# Output ------------------------------------------------------------------------------------
def _console() -> Console:
    """Return a console for results (a terminal sets the width; pipes get 120 columns)."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=120)


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2))


def _format_cpu(milli: int) -> str:
    return f"{milli / 1000:g}"


def _format_memory(mib: int) -> str:
    for unit, size in (("Ti", 1024**2), ("Gi", 1024)):
        if mib >= size:
            return f"{mib / size:.4g}{unit}"
    return f"{mib}Mi"


def _format_time(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _format_gpus(job: Job) -> str:
    res = job["tasks"]["resources"]
    if res["num_gpu"] == 0:
        return "-"
    # A shared GPU (num_gpu 1, gpu_milli < 1000) shows as its share: 0.5.
    count = f"{res['gpu_milli'] / 1000:g}" if res["gpu_milli"] < 1000 else str(res["num_gpu"])
    models = f" {','.join(res['gpu_models'])}" if res["gpu_models"] else ""
    return count + models


def _format_command(command: list[str] | str) -> str:
    import shlex

    return command if isinstance(command, str) else shlex.join(command)


def _queue_position(job: Job) -> int | None:
    """Return the job's place in the queue (1: next), when the server gives one."""
    # Not in the client's Job type: older servers do not send it.
    position = cast("Mapping[str, object]", job).get("queue_position")
    return position if isinstance(position, int) and not isinstance(position, bool) else None


def queue_ordered(jobs: Sequence[Job]) -> list[Job]:
    """Return ``jobs`` with the queued ones, where they stand, in queue position order.

    Jobs without a position (running, finished, held, or from a server that gives none)
    keep their rows; the rows of queued jobs are refilled next-to-start first.
    """
    slots = [i for i, job in enumerate(jobs) if _queue_position(job) is not None]
    queued = sorted((jobs[i] for i in slots), key=lambda j: _queue_position(j) or 0)
    out = list(jobs)
    for i, job in zip(slots, queued, strict=True):
        out[i] = job
    return out


def _state(job: Job) -> str:
    code = job.get("exit_code")
    position = _queue_position(job)
    if position is not None:
        return f"{job['state']} #{position}"
    return job["state"] if code is None else f"{job['state']} (exit {code})"


def _print_job(job: Job) -> None:
    res = job["tasks"]["resources"]
    placement = ", ".join(
        f"{p['rank']}:{p['node']}" + (f"[{','.join(map(str, p['gpus']))}]" if p["gpus"] else "")
        for p in job.get("placement") or []
    )
    rows = [
        ("job", f"{job['id']} {job['name']}"),
        ("project", f"{job['project']} (user {job['user']})"),
        ("state", f"{_state(job)}: {job['reason']}" if job.get("reason") else _state(job)),
        ("attempt", str(job.get("attempt", 0))),
        (
            "tasks",
            f"{job['tasks']['count']} x {_format_cpu(res['cpu_milli'])} CPU, "
            f"{_format_memory(res['memory_mib'])}, GPU {_format_gpus(job)}"
            + (" (gang)" if job.get("gang") else ""),
        ),
        ("priority", str(job["priority"])),
        ("command", _format_command(job["command"])),
        ("workdir", job.get("workdir") or "-"),
        ("env", " ".join(f"{k}={v}" for k, v in (job.get("env") or {}).items()) or "-"),
        ("max runtime", f"{job['max_runtime']} s"),
        ("on failure", f"{job['on_failure']} (max restarts {job['max_restarts']})"),
        ("placement", placement or "-"),
        ("submitted", _format_time(job["submitted_at"])),
        ("started", _format_time(job.get("started_at"))),
        ("finished", _format_time(job.get("finished_at"))),
    ]
    for key, value in rows:
        print(f"{key:<12} {value}")


class _LogWriter:
    """Write log chunks to stdout or stderr as their stream says, optionally tagged by rank."""

    def __init__(self, tag_ranks: bool) -> None:
        self.tag_ranks = tag_ranks
        # Chunks may end mid-line: only the start of a line gets a rank tag.
        self._line_start: dict[tuple[int, str], bool] = {}

    def write(self, chunk: LogChunk) -> None:
        out: TextIO = sys.stderr if chunk["stream"] == "stderr" else sys.stdout
        data = chunk["data"]
        if self.tag_ranks and data:
            key = (chunk["rank"], chunk["stream"])
            at_start = self._line_start.get(key, True)
            parts = []
            for line in re.findall(r"[^\n]*\n|[^\n]+", data):
                parts.append(f"[{chunk['rank']}] {line}" if at_start else line)
                at_start = line.endswith("\n")
            self._line_start[key] = at_start
            data = "".join(parts)
        out.write(data)
        out.flush()


# Verbs -------------------------------------------------------------------------------------
def _client(args: argparse.Namespace) -> Client:
    try:
        return Client(args.server, args.token, ca=args.ca)
    except ValueError as exc:
        field = "--ca" if "CA bundle" in str(exc) else "--server"
        raise InputError(str(exc), field=field) from None


def _error(message: str) -> None:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)


def _guarded(command: Command) -> Command:
    """Turn the errors users cause or meet into one line on stderr and an exit code."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except InputError as exc:
            field = f" (field: {exc.field})" if exc.field else ""
            _error(f"{exc.message}{field}")
            return 2
        except ApiError as exc:
            hint = ""
            if exc.status == 401 and not (args.token or os.environ.get("CPLAT_TOKEN")):
                hint = "; give --token or set CPLAT_TOKEN"
            _error(f"{exc}{hint}")
            return 2 if 400 <= exc.status < 500 else 1
        except ServerUnreachableError as exc:
            _error(f"{exc} (give --server or set CPLAT_SERVER)")
            return 1
        except WaitTimeoutError as exc:
            _error(str(exc))
            return 1
        except BrokenPipeError:
            # The reader went away (``| head``): stop quietly, and keep the interpreter's final
            # flush from failing on the closed pipe.
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            except OSError:  # stdout is not a file (captured): nothing will flush to a pipe
                pass
            return 0

    return run


def _task_range(text: str) -> tuple[int, int]:
    """Parse ``--tasks``: ``N`` or ``MIN:MAX`` (elastic), each at least 1."""
    low, sep, high = text.partition(":")
    try:
        lo, hi = int(low), int(high if sep else low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MIN:MAX, got {text!r}") from None
    if lo < 1 or hi < lo:
        raise argparse.ArgumentTypeError(f"expected 1 <= MIN <= MAX, got {text!r}")
    return lo, hi


def _cmd_submit(args: argparse.Namespace) -> int:
    command = list(args.job_argv)
    # Depending on the Python version argparse may leave the ``--`` separator in place.
    if command and command[0] == "--":
        command = command[1:]
    from cplat.cli.tracking import describe_run, prepare_submission

    command, experiment = prepare_submission(args, command)
    if not command:
        raise InputError(
            "give the command to run after --, as in: -- python train.py", field="command"
        )
    gpu_milli = 1000 if args.gpu_share is None else parse_gpu_share(args.gpu_share)
    num_gpu = args.gpus if args.gpus is not None else (0 if args.gpu_share is None else 1)
    client = _client(args)
    job = client.submit(
        args.name or _default_name(command),
        command,
        project=args.project,
        count=args.tasks[1],
        min_count=args.tasks[0] if args.tasks[0] < args.tasks[1] else None,
        exclusive=args.exclusive,
        cpu_milli=parse_cpu(args.cpu),
        memory_mib=parse_memory(args.memory),
        num_gpu=num_gpu,
        gpu_milli=gpu_milli,
        gpu_models=args.gpu_model or (),
        priority=args.priority,
        gang=args.gang,
        max_runtime=None if args.max_runtime is None else parse_duration(args.max_runtime),
        env=parse_env(args.env or ()),
        workdir=args.workdir,
        on_failure=args.on_failure,
        max_restarts=args.max_restarts,
        idempotency_key=args.idempotency_key,
        experiment=experiment,
    )
    if describe_run(job) and not args.json:
        print(describe_run(job), flush=True)
    held = str(job.get("reason") or "")
    if not held.startswith("unschedulable"):
        held = ""
    if not args.wait:
        if args.json:
            _print_json(job)
        else:
            print(f"submitted job {job['id']} ({job['name']}, {job['state']})")
            if held:
                print(f"it waits: {held}")
        return 0
    timeout = None
    if args.wait_timeout is not None:
        timeout = float(_seconds(args.wait_timeout, "--wait-timeout"))
    if not args.json:
        print(f"submitted job {job['id']} ({job['name']}); waiting", flush=True)
        if held:
            print(f"it waits: {held}", flush=True)
    job = client.wait(job["id"], timeout, poll=POLL_INTERVAL)
    if args.json:
        _print_json(job)
    else:
        print(f"job {job['id']} {_state(job)}")
    return exit_status(job)


def _cmd_list(args: argparse.Namespace) -> int:
    from itertools import islice

    if args.limit is not None and args.limit <= 0:
        raise InputError("expected a positive number of jobs", field="--limit")
    client = _client(args)
    page = 100 if args.limit is None else min(args.limit, 100)
    state = args.state.upper() if args.state else None
    jobs = list(islice(client.list(args.project, state, args.user, limit=page), args.limit))
    if args.json:
        _print_json(jobs)
        return 0
    from rich.markup import escape
    from rich.table import Table

    console = _console()
    if not jobs:
        console.print("no jobs")
        return 0
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("ID", "NAME", "PROJECT", "USER", "STATE", "TASKS", "CPU", "MEMORY", "GPU"):
        table.add_column(column, justify="right" if column in ("ID", "TASKS", "CPU") else "left")
    table.add_column("SUBMITTED")
    table.add_column("REASON", overflow="fold")
    for job in queue_ordered(jobs):
        res = job["tasks"]["resources"]
        table.add_row(
            str(job["id"]),
            escape(job["name"]),
            escape(job["project"]),
            escape(job["user"]),
            escape(_state(job)),
            str(job["tasks"]["count"]),
            _format_cpu(res["cpu_milli"]),
            _format_memory(res["memory_mib"]),
            escape(_format_gpus(job)),
            _format_time(job["submitted_at"]),
            escape(job.get("reason") or ""),
        )
    console.print(table)
    return 0


def _cmd_get(args: argparse.Namespace) -> int:
    job = _client(args).get(args.job_id)
    if args.json:
        _print_json(job)
    else:
        _print_job(job)
    return 0


def _cmd_cancel(args: argparse.Namespace) -> int:
    job = _client(args).cancel(args.job_id)
    if args.json:
        _print_json(job)
    else:
        print(f"cancelled job {job['id']} ({job['state']})")
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    client = _client(args)
    # Fetching the job first answers 404 for a wrong id before any output, and says
    # whether there are several ranks whose lines need telling apart.
    job = client.get(args.job_id)
    writer = _LogWriter(tag_ranks=args.rank is None and job["tasks"]["count"] > 1)
    chunks: Iterable[LogChunk]
    if args.follow:
        chunks = client.follow_logs(
            args.job_id, POLL_INTERVAL, rank=args.rank, attempt=args.attempt
        )
    else:
        chunks = client.logs(args.job_id, rank=args.rank, attempt=args.attempt)
    for chunk in chunks:
        writer.write(chunk)
    return 0


def _cmd_events(args: argparse.Namespace) -> int:
    events = _client(args).events(args.job_id)
    if args.json:
        _print_json(events)
        return 0
    for event in events:
        print(f"{_format_time(event['at'])}  {event['state']:<10} {event['message']}")
    return 0


# Parser ------------------------------------------------------------------------------------
def connection_options() -> argparse.ArgumentParser:
    """Return a new parent parser of ``--server``, ``--token`` and ``--ca``.

    Every verb that talks to a running service takes them (``job``, ``experiments``,
    ``models``, ``hpo``, ``reservation``). Each call builds its own parser, so a caller may
    add its verbs' shared options to it.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--server",
        metavar="URL",
        help=f"service URL (default: $CPLAT_SERVER, else {DEFAULT_SERVER})",
    )
    common.add_argument("--token", help="access token (default: $CPLAT_TOKEN)")
    common.add_argument(
        "--ca",
        metavar="FILE",
        help="PEM CA bundle to verify an https:// server (default: $CPLAT_CA, else the system's)",
    )
    return common


def add_job_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``job`` and its verbs (submit, list, get, cancel, logs, events) to ``cplat``.

    Parameters
    ----------
    sub
        The ``cplat`` parser's subparsers. Each verb sets ``func``, which returns the exit code
        and reports its own errors (one line on stderr).
    """
    job = sub.add_parser(
        "job",
        help="submit and manage jobs on a cplat service",
        description="Submit, list, inspect, cancel and follow jobs on a running cplat service "
        "(cplat serve).",
    )
    verbs = job.add_subparsers(dest="job_command", required=True, metavar="VERB")
    common = connection_options()
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON")

    submit = verbs.add_parser(
        "submit",
        parents=[common, as_json],
        help="submit a job",
        description="Submit a job; the command to run follows --.",
        epilog="example:\n  cplat job submit --tasks 2 --cpu 4 --memory 16Gi --gpus 1 "
        "--max-runtime 2h \\\n      -- python train.py --lr 0.1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    submit.add_argument("--name", help="job name (default: the program's name)")
    submit.add_argument("--project", help="project (default: the token's)")
    submit.add_argument(
        "--tasks",
        type=_task_range,
        default=(1, 1),
        metavar="N|MIN:MAX",
        help="tasks (ranks; default 1); MIN:MAX runs elastic, between MIN and MAX tasks",
    )
    submit.add_argument(
        "--exclusive", action="store_true", help="run alone on its nodes (nothing else joins)"
    )
    submit.add_argument(
        "--cpu", default="1", metavar="CORES", help="cores per task: 4, 0.5 or 500m (default 1)"
    )
    submit.add_argument(
        "--memory", default="1Gi", metavar="SIZE", help="memory per task: 16Gi, 512Mi (default 1Gi)"
    )
    submit.add_argument("--gpus", type=int, metavar="N", help="GPUs per task (default 0)")
    submit.add_argument(
        "--gpu-share",
        metavar="FRACTION",
        help="share of one GPU per task, like 0.5 (implies --gpus 1)",
    )
    submit.add_argument(
        "--gpu-model", action="append", metavar="MODEL", help="acceptable GPU model (repeatable)"
    )
    submit.add_argument("--priority", type=int, default=0, help="-1000 to 1000 (default 0)")
    submit.add_argument(
        "--max-runtime", metavar="DURATION", help="3600, 30m, 2h (default: the service's)"
    )
    submit.add_argument(
        "--env", action="append", metavar="NAME=VALUE", help="task environment (repeatable)"
    )
    submit.add_argument("--workdir", metavar="DIR", help="working directory of the tasks")
    submit.add_argument(
        "--on-failure", choices=("fail", "restart"), default="fail", help="default fail"
    )
    submit.add_argument("--max-restarts", type=int, default=0, metavar="N")
    submit.add_argument(
        "--no-gang",
        dest="gang",
        action="store_false",
        help="let tasks start one by one (default: all together)",
    )
    submit.add_argument(
        "--wait",
        action="store_true",
        help="wait for the job to finish and exit with its exit code",
    )
    submit.add_argument(
        "--wait-timeout", metavar="DURATION", help="with --wait: give up after this long"
    )
    submit.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="key that makes the submission safe to repeat: the service answers a repeat "
        "within a day with the job the first one created (default: a fresh one per run; "
        "retries after a lost answer always reuse it)",
    )
    submit.add_argument("job_argv", nargs="*", metavar="-- COMMAND", help="program and arguments")
    from cplat.cli.tracking import add_submit_options

    add_submit_options(submit)
    submit.set_defaults(func=_guarded(_cmd_submit))

    listing = verbs.add_parser(
        "list",
        parents=[common, as_json],
        help="list jobs",
        description="List jobs by id; the queued ones in the order they will start, their "
        "state followed by their queue position (PENDING #1 starts next).",
    )
    listing.add_argument("--project", help="only this project")
    listing.add_argument("--state", help="only this state (PENDING, RUNNING, ...)")
    listing.add_argument("--user", help="only this user's")
    listing.add_argument("--limit", type=int, metavar="N", help="show at most N jobs")
    listing.set_defaults(func=_guarded(_cmd_list))

    for name, func, text in (
        ("get", _cmd_get, "show a job"),
        ("cancel", _cmd_cancel, "cancel a job"),
        ("events", _cmd_events, "show a job's history"),
    ):
        verb = verbs.add_parser(name, parents=[common, as_json], help=text)
        verb.add_argument("job_id", type=int, metavar="JOB")
        verb.set_defaults(func=_guarded(func))

    logs = verbs.add_parser("logs", parents=[common], help="print a job's output")
    logs.add_argument("job_id", type=int, metavar="JOB")
    logs.add_argument(
        "-f", "--follow", action="store_true", help="keep printing until the job finishes"
    )
    logs.add_argument("--rank", type=int, metavar="N", help="only this task rank")
    logs.add_argument("--attempt", type=int, metavar="N", help="only this attempt")
    logs.set_defaults(func=_guarded(_cmd_logs))


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cplat job ...`` on its own (``python -m cplat.cli.jobs job list``).

    Parameters
    ----------
    argv
        Arguments after the program name, starting with ``job``; ``None`` reads ``sys.argv``.

    Returns
    -------
    int
        The exit code.
    """
    parser = argparse.ArgumentParser(prog="cplat")
    sub = parser.add_subparsers(dest="command", required=True)
    add_job_commands(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("cplat: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - as in cplat.cli.main: no traceback for users
        if os.environ.get("CPLAT_DEBUG"):
            raise
        print(
            f"cplat job: internal error: {type(exc).__name__}: {exc} "
            "(set CPLAT_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
