"""Reader for the Alibaba GPU-disaggregated DLRM inference trace (cluster-trace-gpu-v2025).

Columns: ``instance_sn, role, app_name, cpu_request, cpu_limit, gpu_request, gpu_limit,
rdma_request, rdma_limit, memory_request, memory_limit, disk_request, disk_limit,
max_instance_per_node, creation_time, scheduled_time, deletion_time``; times in seconds from the
trace start, empty when the event lies outside the trace window. Extra columns are ignored.

Mapping, one job per instance (row):

- ``job_id`` = the row's 0-based position among the data rows (skipped rows keep their numbers);
- ``submit_time`` = ``creation_time`` rounded to whole seconds, or 0 when empty (the instance
  existed at trace start); ``duration`` = end - submit, where end = ``deletion_time``, or the trace
  end when empty (the instance outlived the window). The trace end is the largest time of any
  kept row (creation, scheduled or deletion);
- one task: ``cpu_milli`` = round(cpu_request x 1000) (vCPUs), ``memory_mib`` =
  round(memory_request x 1024) (GiB), ``num_gpu`` = gpu_request (whole devices, ``gpu_milli``
  1000, or 0 for CPU instances); ``group`` = ``app_name``; ``queue`` = ``role`` (``CN`` CPU-node
  instance, ``HN`` GPU-node instance); ``user`` ``""``; ``requested_time`` null.

RDMA, disk, limits and ``max_instance_per_node`` have no place in the job schema and are not kept.
The release has no node list, so the trace's ``nodes`` is ``None``. ``meta`` records
``filled_start_times`` and ``filled_end_times`` (how many times were set to 0 / the trace end),
``trace_end`` and the instance counts by role.

Bad rows (a malformed or negative number, a fractional GPU request, deletion before creation, an
empty ``app_name`` or ``role``, the wrong number of fields) are skipped and counted by reason, or
raise :class:`~cplat.errors.InputError` with line and column when ``strict=True``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from cplat.traces.trace import (
    INT32_MAX,
    FieldError,
    MetaValue,
    RowErrors,
    Trace,
    iter_csv,
    jobs_table,
    parse_float,
    parse_int,
    validate_jobs,
)

__all__ = ["DLRM_REQUIRED", "read_dlrm"]

DLRM_REQUIRED = (
    "instance_sn",
    "role",
    "app_name",
    "cpu_request",
    "gpu_request",
    "memory_request",
    "creation_time",
    "deletion_time",
)


def _time(text: str, field: str) -> int | None:
    if not text.strip():
        return None
    return round(parse_float(text, field=field))


def read_dlrm(path: str | Path, *, strict: bool = False) -> Trace:
    """Read the DLRM inference-instance trace (see the module docstring for the rules).

    Parameters
    ----------
    path
        ``disaggregated_DLRM_trace.csv`` (plain or ``.gz``).
    strict
        Raise at the first bad row instead of skipping it.

    Returns
    -------
    Trace
        One job per instance, no nodes.

    Raises
    ------
    cplat.errors.InputError
        For file-level problems and, in strict mode, for the first bad row.
    """
    path = Path(path)
    source = str(path)
    errors = RowErrors(source, strict=strict)
    # (job_id, start or None, end or None, cpu, mem, gpu, app, role)
    rows: list[tuple[int, int | None, int | None, int, int, int, str, str]] = []
    lines: list[int] = []
    trace_end = 0
    index = -1
    for line, row in iter_csv(path, errors, DLRM_REQUIRED, extra="ignore"):
        index += 1
        try:
            app = row["app_name"].strip()
            if not app:
                raise FieldError("app_name", "empty app name")
            role = row["role"].strip()
            if not role:
                raise FieldError("role", "empty role")
            cpu = round(
                parse_float(row["cpu_request"], field="cpu_request", maximum=2.0**40) * 1000
            )
            mem = round(
                parse_float(row["memory_request"], field="memory_request", maximum=2.0**40) * 1024
            )
            gpu = parse_int(row["gpu_request"], field="gpu_request", maximum=INT32_MAX)
            start = _time(row["creation_time"], "creation_time")
            end = _time(row["deletion_time"], "deletion_time")
            scheduled = _time(row.get("scheduled_time", ""), "scheduled_time")
            if start is not None and end is not None and end < start:
                raise FieldError(
                    "deletion_time",
                    f"deletion_time {end} is before creation_time {start}",
                    reason="negative duration",
                )
        except FieldError as exc:
            errors.bad_field(exc, row=line)
            continue
        for t in (start, end, scheduled):
            if t is not None and t > trace_end:
                trace_end = t
        rows.append((index, start, end, cpu, mem, gpu, app, role))
        lines.append(line)

    filled_start = sum(1 for r in rows if r[1] is None)
    filled_end = sum(1 for r in rows if r[2] is None)
    submits = [r[1] if r[1] is not None else 0 for r in rows]
    ends = [r[2] if r[2] is not None else trace_end for r in rows]
    jobs = jobs_table(
        {
            "job_id": [r[0] for r in rows],
            "submit_time": submits,
            "duration": [e - s for s, e in zip(submits, ends, strict=True)],
            "cpu_milli": [r[3] for r in rows],
            "memory_mib": [r[4] for r in rows],
            "num_gpu": [r[5] for r in rows],
            "gpu_milli": [1000 if r[5] > 0 else 0 for r in rows],
            "group": [r[6] for r in rows],
            "queue": [r[7] for r in rows],
        }
    )
    validate_jobs(jobs, source=source)
    meta: dict[str, MetaValue] = {
        "format": "dlrm",
        "source": source,
        "trace_end": trace_end,
        "filled_start_times": filled_start,
        "filled_end_times": filled_end,
        "apps": len({r[6] for r in rows}),
    }
    for role, count in sorted(Counter(r[7] for r in rows).items()):
        meta[f"role.{role}"] = count
    return Trace(
        jobs=jobs,
        nodes=None,
        report=errors.report(len(rows)),
        meta=meta,
        lines=np.asarray(lines, dtype=np.int64),
        fields={
            "cpu_milli": "cpu_request",
            "memory_mib": "memory_request",
            "num_gpu": "gpu_request",
            "group": "app_name",
            "queue": "role",
        },
    )
