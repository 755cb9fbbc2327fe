"""Reader for the Standard Workload Format (SWF) of the Parallel Workloads Archive.

An SWF file (plain or ``.gz``) has header lines starting with ``;`` (``; MaxNodes: 128``) and one
job per line with 18 whitespace-separated numeric fields, ``-1`` meaning unknown:

 1 job number, 2 submit time, 3 wait time, 4 run time, 5 allocated processors, 6 average CPU time,
 7 used memory, 8 requested processors, 9 requested time, 10 requested memory, 11 status,
 12 user id, 13 group id, 14 executable id, 15 queue, 16 partition, 17 preceding job,
 18 think time.

Mapping rules (they reproduce the loading protocol of RLScheduler, SC'20, whose published tables
were computed on the Lublin logs):

- width = max(allocated processors f5, requested processors f8); a job has ``num_tasks = width``
  tasks of one processor each (``cpu_milli = 1000``), no memory and no GPUs.
- ``duration`` = run time f4; ``submit_time`` = f2 as is; ``requested_time`` = f9, or the run
  time when f9 is unknown (negative); ``meta["estimated_requested_times"]`` counts the fills.
- ``user`` = str(f12), ``group`` = str(f13), ``queue`` = str(f15), each ``""`` when -1;
  ``priority`` 0; ``job_id`` = f1.
- Dropped by rule, counted in both modes and never an error: run time 0 (reason
  ``"zero run time"``), run time < 0 (``"unknown run time"``; RLScheduler instead sets such run
  times to 10, but the Lublin and NASA logs have none), width <= 0 (``"no processors"``: both
  counts 0 or -1).
- Bad rows, skipped and counted (or, with ``strict=True``, an ``InputError`` naming line and field,
  e.g. field ``'run_time'``): a line without exactly 18 fields, a non-numeric field, a fractional
  or negative value where an integer is needed (job id, submit time), a processor count below
  -1 (``"negative processors"``; -1 alone means unknown), a duplicate job id.
- Job ids not increasing: the table is sorted by job id and a warning is recorded
  (``"unsorted job ids"``), with the count in ``meta["unsorted_job_ids"]``.

Nodes: ``MaxNodes`` nodes (``MaxProcs`` when ``MaxNodes`` is absent; an absent ``MaxProcs`` equals
``MaxNodes``) of ``1000 * (MaxProcs // MaxNodes)`` milli-CPU each, no memory, no GPUs, named
``swf-node-0000``, ...; MaxProcs not a multiple of MaxNodes is an error. Without either header the
trace has no nodes and a warning says so.

``meta`` holds ``format``, the header values found (``max_nodes``, ``max_procs``,
``procs_per_node``, ``unix_start_time``, ``max_runtime``, ``max_jobs``, ``time_zone_string``, ...)
and the counts above.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from cplat.errors import InputError
from cplat.traces._csv import open_text
from cplat.traces.trace import (
    INT32_MAX,
    FieldError,
    MetaValue,
    RowErrors,
    Trace,
    jobs_table,
    nodes_table,
    validate_jobs,
)

__all__ = ["SWF_FIELDS", "read_swf"]

#: Names of the 18 SWF fields, as used in error messages.
SWF_FIELDS = (
    "job_id",
    "submit_time",
    "wait_time",
    "run_time",
    "allocated_processors",
    "average_cpu_time",
    "used_memory",
    "requested_processors",
    "requested_time",
    "requested_memory",
    "status",
    "user_id",
    "group_id",
    "executable_id",
    "queue",
    "partition",
    "preceding_job",
    "think_time",
)
# Fields the reader uses; they must hold integers.
_USED = frozenset(
    (
        "job_id",
        "submit_time",
        "run_time",
        "allocated_processors",
        "requested_processors",
        "requested_time",
        "user_id",
        "group_id",
        "queue",
    )
)
_NUMERIC_HEADERS = {
    "MaxJobs": "max_jobs",
    "MaxRecords": "max_records",
    "MaxNodes": "max_nodes",
    "MaxProcs": "max_procs",
    "MaxRuntime": "max_runtime",
    "MaxMemory": "max_memory",
    "UnixStartTime": "unix_start_time",
    "TimeZone": "time_zone",
    "MaxQueues": "max_queues",
    "MaxPartitions": "max_partitions",
}
_TEXT_HEADERS = {
    "Version": "swf_version",
    "Computer": "computer",
    "Installation": "installation",
    "TimeZoneString": "time_zone_string",
    "StartTime": "start_time",
    "EndTime": "end_time",
}
_HEADER = re.compile(r"^;\s*([A-Za-z]\w*)\s*:\s*(.*?)\s*$")
_LEADING_INT = re.compile(r"^[+-]?\d+")


def _number(token: str, name: str) -> int | None:
    """Parse one SWF field: an int for used fields, any finite number otherwise (returns None)."""
    try:
        return int(token)
    except ValueError:
        pass
    try:
        value = float(token)
    except ValueError:
        raise FieldError(
            name, f"expected a number, got {token!r}", reason="non-numeric field"
        ) from None
    if not math.isfinite(value):
        raise FieldError(
            name, f"expected a finite number, got {token!r}", reason="non-numeric field"
        )
    if name in _USED:
        if not value.is_integer():
            raise FieldError(
                name, f"expected an integer, got {token!r}", reason="non-numeric field"
            )
        return int(value)
    return None


def _text_id(value: int) -> str:
    return "" if value < 0 else str(value)


def read_swf(path: str | Path, *, strict: bool = False) -> Trace:
    """Read an SWF log (plain or gzip) into a :class:`~cplat.traces.trace.Trace`.

    See the module docstring for the mapping, skip and strict rules.

    Parameters
    ----------
    path
        The ``.swf`` or ``.swf.gz`` file.
    strict
        Raise at the first bad row instead of skipping it.

    Returns
    -------
    Trace
        Jobs, nodes from the ``MaxNodes``/``MaxProcs`` header (or ``None``), report and meta.

    Raises
    ------
    InputError
        For an unreadable file, a bad header value used for the nodes, and (strict) bad rows.
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise InputError("file not found", source=source)
    errors = RowErrors(source, strict=strict)
    header: dict[str, MetaValue] = {}
    header_lines: dict[str, int] = {}
    rows: list[tuple[int, int, int, int, int, str, str, str, int]] = []
    seen_ids: set[int] = set()
    filled = 0
    try:
        with open_text(path) as fh:
            for line_no, line in enumerate(fh, start=1):
                stripped = line.strip()
                if not stripped:
                    continue
                if stripped.startswith(";"):
                    _parse_header(stripped, line_no, header, header_lines, errors)
                    continue
                errors.rows_read += 1
                tokens = stripped.split()
                if len(tokens) != len(SWF_FIELDS):
                    errors.bad(
                        f"expected {len(SWF_FIELDS)} whitespace-separated fields, "
                        f"found {len(tokens)}",
                        row=line_no,
                        reason="wrong field count",
                    )
                    continue
                try:
                    values = [_number(t, n) for t, n in zip(tokens, SWF_FIELDS, strict=True)]
                except FieldError as exc:
                    errors.bad_field(exc, row=line_no)
                    continue
                job_id, submit, _, run, alloc, _, _, req_procs, req_time = values[:9]
                user, group, _, queue = values[11:15]
                assert job_id is not None and submit is not None and run is not None
                assert alloc is not None and req_procs is not None and req_time is not None
                assert user is not None and group is not None and queue is not None
                if job_id < 0:
                    errors.bad(
                        f"expected a non-negative job id, got {job_id}", row=line_no, field="job_id"
                    )
                    continue
                if submit < 0:
                    errors.bad(
                        f"expected a non-negative submit time, got {submit}",
                        row=line_no,
                        field="submit_time",
                    )
                    continue
                if run == 0:
                    errors.drop("zero run time", "run time is 0", row=line_no, field="run_time")
                    continue
                if run < 0:
                    errors.drop(
                        "unknown run time", f"run time is {run}", row=line_no, field="run_time"
                    )
                    continue
                # -1 is SWF's "unknown"; any other negative count is a malformed row.
                negative = [
                    (count, name)
                    for count, name in (
                        (alloc, "allocated_processors"),
                        (req_procs, "requested_processors"),
                    )
                    if count < -1
                ]
                if negative:
                    errors.bad(
                        f"expected a processor count >= 0 or -1 (unknown), got {negative[0][0]}",
                        row=line_no,
                        field=negative[0][1],
                        reason="negative processors",
                    )
                    continue
                width = max(alloc, req_procs)
                if width <= 0:
                    errors.drop(
                        "no processors",
                        f"allocated ({alloc}) and requested ({req_procs}) processors are unknown",
                        row=line_no,
                        field="allocated_processors",
                    )
                    continue
                if width > INT32_MAX:
                    errors.bad(
                        f"expected at most {INT32_MAX} processors, got {width}",
                        row=line_no,
                        field="allocated_processors"
                        if alloc >= req_procs
                        else "requested_processors",
                    )
                    continue
                if job_id in seen_ids:
                    errors.bad(
                        f"duplicate job id {job_id}",
                        row=line_no,
                        field="job_id",
                        reason="duplicate job id",
                    )
                    continue
                seen_ids.add(job_id)
                if req_time < 0:
                    req_time = run
                    filled += 1
                rows.append(
                    (
                        job_id,
                        submit,
                        run,
                        req_time,
                        width,
                        _text_id(user),
                        _text_id(group),
                        _text_id(queue),
                        line_no,
                    )
                )
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text ({exc.reason})", source=source) from None
    except (OSError, EOFError) as exc:
        raise InputError(f"cannot read file ({exc})", source=source) from None

    unsorted = sum(1 for a, b in zip(rows, rows[1:], strict=False) if b[0] < a[0])
    if unsorted:
        rows.sort(key=lambda r: r[0])
        errors.warn(
            f"unsorted job ids: {unsorted} rows had a smaller id than the row before; "
            "sorted by job id"
        )

    meta: dict[str, MetaValue] = {"format": "swf", "source": source}
    meta.update(header)
    nodes = _nodes(header, header_lines, source, errors, meta)
    if nodes is not None:
        procs = int(meta["max_procs"])
        wider = sum(1 for r in rows if r[4] > procs)
        if wider:
            errors.warn(f"{wider} jobs ask for more than the machine's {procs} processors")
            meta["jobs_wider_than_machine"] = wider
    meta["estimated_requested_times"] = filled
    meta["unsorted_job_ids"] = unsorted

    jobs = jobs_table(
        {
            "job_id": [r[0] for r in rows],
            "submit_time": [r[1] for r in rows],
            "duration": [r[2] for r in rows],
            "requested_time": [r[3] for r in rows],
            "num_tasks": [r[4] for r in rows],
            "cpu_milli": [1000] * len(rows),
            "user": [r[5] for r in rows],
            "group": [r[6] for r in rows],
            "queue": [r[7] for r in rows],
        }
    )
    validate_jobs(jobs, source=source)
    return Trace(
        jobs=jobs,
        nodes=nodes,
        report=errors.report(len(rows)),
        meta=meta,
        lines=np.asarray([r[8] for r in rows], dtype=np.int64),
    )


def _parse_header(
    line: str,
    line_no: int,
    header: dict[str, MetaValue],
    header_lines: dict[str, int],
    errors: RowErrors,
) -> None:
    match = _HEADER.match(line)
    if match is None:
        return
    key, value = match.group(1), match.group(2)
    if key in _NUMERIC_HEADERS:
        name = _NUMERIC_HEADERS[key]
        if name in header:
            return
        number = _LEADING_INT.match(value)
        if number is None:
            message = f"header {key}: expected an integer, got {value!r}"
            if errors.strict:
                raise InputError(message, source=errors.source, row=line_no, field=key)
            errors.warn(f"line {line_no}: {message}; ignored")
            return
        header[name] = int(number.group(0))
        header_lines[name] = line_no
    elif key in _TEXT_HEADERS and _TEXT_HEADERS[key] not in header:
        header[_TEXT_HEADERS[key]] = value


def _nodes(
    header: dict[str, MetaValue],
    header_lines: dict[str, int],
    source: str,
    errors: RowErrors,
    meta: dict[str, MetaValue],
) -> pa.Table | None:
    sizes: dict[str, int] = {}
    for name in ("max_nodes", "max_procs"):
        value = header.get(name)
        if value is None:
            continue
        if int(value) <= 0:
            errors.warn(f"header {name} is {value}; ignored")
            continue
        sizes[name] = int(value)
    if not sizes:
        errors.warn("no MaxNodes or MaxProcs header: the trace has no node list")
        return None
    count = sizes.get("max_nodes", sizes.get("max_procs", 0))
    procs = sizes.get("max_procs", count)
    if procs % count:
        raise InputError(
            f"MaxProcs {procs} is not a multiple of MaxNodes {count}; "
            "nodes of unequal size are not supported",
            source=source,
            row=header_lines.get("max_procs"),
            field="MaxProcs",
        )
    per_node = procs // count
    meta["max_nodes"] = count
    meta["max_procs"] = procs
    meta["procs_per_node"] = per_node
    digits = max(4, len(str(count - 1)))
    return nodes_table(
        {
            "name": [f"swf-node-{i:0{digits}d}" for i in range(count)],
            "cpu_milli": [1000 * per_node] * count,
            "num_gpu": [0] * count,
        }
    )
