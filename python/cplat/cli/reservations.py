"""``cplat reservation create | list | delete``: nodes held for a project, maintenance windows.

A reservation names nodes (``--node``, repeated) or asks for capacity (``--nodes N``,
``--cpu``, ``--memory``, ``--gpus``, ``--gpu-model``) over a window: ``--start`` (``now``, a
duration ahead such as ``+2h``, Unix seconds or an ISO 8601 time) and ``--end`` or
``--duration``. ``--owner`` gives the nodes to one project; without it the window is a
maintenance window nobody's jobs may overlap, and ``--drain`` drains the nodes for it.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from typing import Any

from cplat.cli.jobs import (
    _client,
    _console,
    _format_time,
    _guarded,
    _print_json,
    connection_options,
    parse_cpu,
    parse_duration,
    parse_memory,
)
from cplat.errors import InputError

__all__ = ["add_reservation_commands", "parse_when"]


def parse_when(text: str, field: str, now: float | None = None) -> int:
    """Parse a point in time into Unix seconds.

    ``now``; ``+DURATION`` (``+90m``, ``+1d``) from now; Unix seconds; or ISO 8601
    (``2025-06-01T08:00``, local time unless it names its zone).

    Raises
    ------
    InputError
        For anything else; it names ``field``.
    """
    spec = text.strip()
    now = time.time() if now is None else now
    if spec == "now":
        return int(now)
    if spec.startswith("+"):
        return int(now) + parse_duration(spec[1:], field)
    if spec.isdigit():
        return int(spec)
    try:
        return int(datetime.fromisoformat(spec).timestamp())
    except ValueError:
        raise InputError(
            f"expected now, +DURATION, Unix seconds or an ISO 8601 time, got {text!r}",
            field=field,
        ) from None


def _cmd_create(args: argparse.Namespace) -> int:
    now = time.time()
    start = parse_when(args.start, "--start", now)
    if (args.end is None) == (args.duration is None):
        raise InputError("give --end or --duration", field="--end")
    end = (
        parse_when(args.end, "--end", now)
        if args.end is not None
        else start + parse_duration(args.duration, "--duration")
    )
    body: dict[str, Any] = {"start": start, "end": end}
    if args.owner:
        body["owner"] = args.owner
    if args.drain:
        body["drain"] = True
    capacity: dict[str, Any] = {}
    if args.nodes is not None:
        capacity["nodes"] = args.nodes
    if args.cpu is not None:
        capacity["cpu_milli"] = parse_cpu(args.cpu)
    if args.memory is not None:
        capacity["memory_mib"] = parse_memory(args.memory)
    if args.gpus is not None:
        capacity["gpus"] = args.gpus
    if args.gpu_model is not None:
        capacity["gpu_model"] = args.gpu_model
    if args.node and capacity:
        raise InputError("name nodes (--node) or ask for capacity, not both", field="--node")
    if args.node:
        body["nodes"] = list(args.node)
    elif capacity:
        body["capacity"] = capacity
    else:
        raise InputError("name nodes (--node) or ask for capacity (--nodes, --gpus, ...)",
                         field="--node")  # fmt: skip
    res = _client(args).request("POST", "/v1/reservations", body=body)
    if args.json:
        _print_json(res)
    else:
        print(f"reservation {res['id']}: {', '.join(res['nodes'])} "
              f"from {_format_time(res['start'])} to {_format_time(res['end'])}")  # fmt: skip
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    answer = _client(args).request("GET", "/v1/reservations")
    items = answer.get("reservations", []) if isinstance(answer, dict) else []
    if args.json:
        _print_json(items)
        return 0
    from rich.markup import escape
    from rich.table import Table

    console = _console()
    if not items:
        console.print("no reservations")
        return 0
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("ID", "OWNER", "START", "END", "DRAIN", "ACTIVE", "NODES"):
        table.add_column(column, justify="right" if column == "ID" else "left")
    for r in items:
        table.add_row(
            str(r["id"]),
            escape(r["owner"] or "(maintenance)"),
            _format_time(r["start"]),
            _format_time(r["end"]),
            "yes" if r["drain"] else "no",
            "yes" if r["active"] else "no",
            escape(", ".join(r["nodes"])),
        )
    console.print(table)
    return 0


def _cmd_delete(args: argparse.Namespace) -> int:
    _client(args).request("DELETE", f"/v1/reservations/{int(args.reservation_id)}")
    print(f"reservation {args.reservation_id} deleted")
    return 0


def add_reservation_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``reservation`` and its verbs (create, list, delete) to ``cplat``.

    Parameters
    ----------
    sub
        The ``cplat`` parser's subparsers.
    """
    top = sub.add_parser(
        "reservation",
        help="reserve nodes for a project, or plan a maintenance window",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    verbs = top.add_subparsers(dest="reservation_command", required=True, metavar="VERB")
    common = connection_options()
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON")

    create = verbs.add_parser(
        "create",
        parents=[common, as_json],
        help="reserve nodes (cluster admins)",
        epilog="examples:\n  cplat reservation create --owner team-a --gpus 16 --start +1h "
        "--duration 8h\n  cplat reservation create --node n1 --node n2 --drain "
        "--start 2025-06-01T08:00 --end 2025-06-01T12:00",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    create.add_argument("--start", default="now", help="now, +DURATION, Unix seconds or ISO 8601")
    create.add_argument("--end", help="end of the window (as --start)")
    create.add_argument("--duration", help="length of the window: 90m, 8h, 2d")
    create.add_argument("--owner", help="project the nodes are held for (none: maintenance)")
    create.add_argument("--drain", action="store_true", help="drain the nodes for the window")
    create.add_argument("--node", action="append", metavar="NAME", help="a node (repeat)")
    create.add_argument("--nodes", type=int, metavar="N", help="at least N nodes")
    create.add_argument("--cpu", metavar="CORES", help="at least this many cores in all")
    create.add_argument("--memory", metavar="SIZE", help="at least this much memory in all")
    create.add_argument("--gpus", type=int, metavar="N", help="at least N GPUs in all")
    create.add_argument("--gpu-model", metavar="MODEL", help="only nodes of this GPU model")
    create.set_defaults(func=_guarded(_cmd_create))

    listing = verbs.add_parser("list", parents=[common, as_json], help="list reservations")
    listing.set_defaults(func=_guarded(_cmd_list))

    delete = verbs.add_parser("delete", parents=[common], help="delete a reservation")
    delete.add_argument("reservation_id", type=int, metavar="ID")
    delete.set_defaults(func=_guarded(_cmd_delete))
