"""Readers for per-job GPU tables (Philly-style CSV) and for any CSV/Parquet job table by mapping.

:func:`read_gpu_jobs_csv` reads tables in the style of the Microsoft Philly trace summaries: one
row per job with a wall-clock ``timestamp`` (submission), ``duration`` in seconds and
``num_gpus``; optional ``job_id``, ``user``, ``cluster`` (virtual cluster) and ``status``; other
columns are ignored.

- Timestamps are ISO 8601 (``2017-10-03T02:04:37``, ``Z`` or ``+hh:mm`` offsets allowed) or
  ``YYYY-MM-DD HH:MM:SS``, or follow ``time_format`` (a :func:`datetime.strptime` format) when
  given. Times without a zone are taken as UTC.
- Rows are sorted by timestamp (ties keep file order); ``submit_time`` = whole seconds since the
  earliest timestamp (rounded), ``duration`` = the duration rounded to whole seconds.
- A job of ``g = num_gpus`` GPUs that fits one machine (``g <= gpus_per_machine``, default 8,
  Philly's largest machines) is one task of ``g`` whole devices (``gpu_milli`` 1000, or 0 when
  ``g == 0``). A wider job is a gang (started all together or not at all) of ``k`` equal tasks
  of ``g / k`` devices, ``k`` the smallest divisor of ``g`` with ``g / k <= gpus_per_machine``:
  128 GPUs on 8-GPU machines are 16 tasks of 8, 12 GPUs are 2 tasks of 6. Tasks are equal
  because the job schema's tasks are identical, and the job keeps its exact GPU count (a
  prime count above the machine size becomes ``g`` one-GPU tasks). ``meta["gang_jobs"]``
  counts these jobs.
- ``cpu_milli`` 0, ``memory_mib`` 0, ``requested_time`` null; ``user`` = ``user``, ``group`` =
  ``cluster``, ``queue`` ``""``.
- ``job_id`` = the ``job_id`` column when every value is a non-negative integer, otherwise the
  job's 0-based position in submission order (a warning says so; Philly's own ids are strings).
  Duplicate ``job_id`` values are bad rows.
- ``meta`` records the earliest timestamp (``start_time``, ``unix_start_time``) and counts by
  ``status`` (``status.Pass``, ...).

:func:`read_jobs_table` maps the columns of any CSV or Parquet file onto the job schema.

In both readers, bad rows (a malformed value, a negative duration, a duplicate id, GPU shape rules
broken, the wrong number of fields) are skipped and counted by reason, or raise
:class:`~cplat.errors.InputError` with line and column when ``strict=True``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cplat.errors import InputError
from cplat.traces.schema import JOB_SCHEMA
from cplat.traces.trace import (
    INT32_MAX,
    FieldError,
    MetaValue,
    RowErrors,
    Trace,
    check_gpu_shape,
    iter_csv,
    job_defaults,
    jobs_table,
    parse_float,
    parse_int,
    validate_jobs,
)

__all__ = ["DEFAULT_GPUS_PER_MACHINE", "gang_shape", "read_gpu_jobs_csv", "read_jobs_table"]

GPU_JOBS_REQUIRED = ("timestamp", "duration", "num_gpus")
#: GPUs of the largest Philly machine; wider jobs are gangs of machine-sized tasks.
DEFAULT_GPUS_PER_MACHINE = 8


def gang_shape(gpus: int, gpus_per_machine: int) -> tuple[int, int]:
    """Return ``(tasks, gpus per task)`` for a job of ``gpus`` GPUs on machines of that size.

    One task when the job fits one machine; otherwise the fewest equal tasks that each fit a
    machine and together hold exactly ``gpus`` devices (see the module docstring).

    Raises
    ------
    ValueError
        When ``gpus`` is negative or ``gpus_per_machine`` is not positive.
    """
    if gpus < 0 or gpus_per_machine < 1:
        raise ValueError(
            f"need gpus >= 0 and gpus_per_machine >= 1, got {gpus} and {gpus_per_machine}"
        )
    if gpus <= gpus_per_machine:
        return 1, gpus
    tasks = -(-gpus // gpus_per_machine)
    while gpus % tasks:
        tasks += 1
    return tasks, gpus // tasks


def _parse_time(text: str, time_format: str | None) -> datetime:
    text = text.strip()
    if not text:
        raise FieldError("timestamp", "expected a date and time, got an empty value")
    try:
        if time_format is not None:
            moment = datetime.strptime(text, time_format)
        else:
            iso = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
            moment = datetime.fromisoformat(iso)
    except ValueError:
        expected = time_format or "ISO 8601 or YYYY-MM-DD HH:MM:SS"
        raise FieldError(
            "timestamp", f"expected a date and time ({expected}), got {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment


def read_gpu_jobs_csv(
    path: str | Path,
    *,
    strict: bool = False,
    time_format: str | None = None,
    gpus_per_machine: int = DEFAULT_GPUS_PER_MACHINE,
) -> Trace:
    """Read a Philly-style per-job GPU table (see the module docstring for the rules).

    Parameters
    ----------
    path
        CSV file (plain or ``.gz``) with ``timestamp``, ``duration`` and ``num_gpus`` columns.
    strict
        Raise at the first bad row instead of skipping it.
    time_format
        :func:`datetime.strptime` format of ``timestamp``; ISO 8601 by default.
    gpus_per_machine
        GPUs of the largest machine of the cluster the trace will run on: wider jobs become
        gangs of tasks that each fit one machine.

    Returns
    -------
    Trace
        Jobs sorted by submission time, no nodes.

    Raises
    ------
    InputError
        For file-level problems and, in strict mode, for the first bad row.
    """
    path = Path(path)
    source = str(path)
    if isinstance(gpus_per_machine, bool) or not (
        isinstance(gpus_per_machine, int) and gpus_per_machine >= 1
    ):
        raise InputError(
            f"expected a positive number of GPUs per machine, got {gpus_per_machine!r}",
            field="gpus_per_machine",
        )
    errors = RowErrors(source, strict=strict)
    # (timestamp, file order, duration, gpus, raw id, user, cluster, status, line)
    rows: list[tuple[float, int, int, int, str, str, str, str, int]] = []
    seen_ids: set[str] = set()
    for line, row in iter_csv(path, errors, GPU_JOBS_REQUIRED, extra="ignore"):
        try:
            moment = _parse_time(row["timestamp"], time_format).timestamp()
            duration = round(parse_float(row["duration"], field="duration"))
            gpus = parse_int(row["num_gpus"], field="num_gpus", maximum=INT32_MAX)
            raw_id = row.get("job_id", "").strip()
            if raw_id and raw_id in seen_ids:
                raise FieldError(
                    "job_id", f"duplicate job id {raw_id!r}", reason="duplicate job id"
                )
        except FieldError as exc:
            errors.bad_field(exc, row=line)
            continue
        if raw_id:
            seen_ids.add(raw_id)
        rows.append(
            (
                moment,
                len(rows),
                duration,
                gpus,
                raw_id,
                row.get("user", "").strip(),
                row.get("cluster", "").strip(),
                row.get("status", "").strip(),
                line,
            )
        )
    rows.sort(key=lambda r: (r[0], r[1]))
    meta: dict[str, MetaValue] = {"format": "philly", "source": source}
    job_ids: list[int] = list(range(len(rows)))
    ids_from_column = False
    if rows and all(r[4].isascii() and r[4].isdigit() for r in rows):
        as_ints = [int(r[4]) for r in rows]
        if len(set(as_ints)) == len(as_ints) and max(as_ints) < 2**63:
            job_ids = as_ints
            ids_from_column = True
    if rows and not ids_from_column:
        if any(r[4] for r in rows):
            errors.warn(
                "job_id values are not all distinct non-negative integers; "
                "job ids are positions in submission order"
            )
    meta["job_id_source"] = "column" if ids_from_column else "position"
    start = rows[0][0] if rows else 0.0
    if rows:
        meta["unix_start_time"] = round(start)
        meta["start_time"] = datetime.fromtimestamp(start, tz=timezone.utc).isoformat()
    for status, count in sorted(Counter(r[7] for r in rows if r[7]).items()):
        meta[f"status.{status}"] = count
    shapes = [gang_shape(r[3], gpus_per_machine) for r in rows]
    meta["gpus_per_machine"] = gpus_per_machine
    meta["gang_jobs"] = sum(1 for tasks, _ in shapes if tasks > 1)
    jobs = jobs_table(
        {
            "job_id": job_ids,
            "submit_time": [round(r[0] - start) for r in rows],
            "duration": [r[2] for r in rows],
            "num_tasks": [tasks for tasks, _ in shapes],
            "num_gpu": [per_task for _, per_task in shapes],
            "gpu_milli": [1000 if r[3] > 0 else 0 for r in rows],
            "user": [r[5] for r in rows],
            "group": [r[6] for r in rows],
        }
    )
    validate_jobs(jobs, source=source)
    return Trace(
        jobs=jobs,
        nodes=None,
        report=errors.report(len(rows)),
        meta=meta,
        lines=np.asarray([r[8] for r in rows], dtype=np.int64),
        fields={"num_gpu": "num_gpus", "num_tasks": "num_gpus", "group": "cluster"},
    )


# ---------------------------------------------------------------------------------------------
# Generic mapped tables

_INT_LIMITS: dict[str, tuple[int, int]] = {
    "job_id": (0, 2**63 - 1),
    "submit_time": (0, 2**63 - 1),
    "duration": (0, 2**63 - 1),
    "requested_time": (0, 2**63 - 1),
    "num_tasks": (1, INT32_MAX),
    "cpu_milli": (0, 2**63 - 1),
    "memory_mib": (0, 2**63 - 1),
    "num_gpu": (0, INT32_MAX),
    "gpu_milli": (0, 1000),
    "priority": (0, INT32_MAX),
}


def _convert(canonical: str, value: object, field: str) -> object:
    """Convert one source value to the type of the canonical column ``canonical``."""
    if canonical in _INT_LIMITS:
        if canonical == "requested_time" and (
            value is None or (isinstance(value, str) and not value.strip())
        ):
            return None
        low, high = _INT_LIMITS[canonical]
        return parse_int(value, field=field, minimum=low, maximum=high)
    if value is None:
        return ""
    return value.strip() if isinstance(value, str) else str(value)


def _as_int(value: object) -> int:
    assert isinstance(value, int)
    return value


def _check_names(names: Mapping[str, object], what: str) -> None:
    unknown = [n for n in names if n not in JOB_SCHEMA.names]
    if unknown:
        raise InputError(
            f"unknown canonical column {unknown[0]!r} in {what} "
            f"(valid: {', '.join(JOB_SCHEMA.names)})",
            field=unknown[0],
        )


def read_jobs_table(
    path: str | Path,
    mapping: dict[str, str],
    *,
    strict: bool = False,
    defaults: dict[str, object] | None = None,
) -> Trace:
    """Read any CSV or Parquet job table by mapping its columns onto :data:`JOB_SCHEMA`.

    Parameters
    ----------
    path
        A ``.parquet``/``.pq`` file, or a CSV file (plain or ``.gz``).
    mapping
        Canonical column name -> source column name, e.g. ``{"submit_time": "submit",
        "duration": "runtime"}``.
    strict
        Raise at the first bad row instead of skipping it.
    defaults
        Values for unmapped canonical columns, overriding the built-in defaults:
        ``requested_time`` null, ``num_tasks`` 1, strings ``""``, other integers 0, except
        ``gpu_milli``, which defaults to 1000 for rows with ``num_gpu > 0``. ``job_id`` has no
        default: unmapped, it is the row's 0-based position among the data rows.

    Returns
    -------
    Trace
        Jobs in file order, no nodes. Integer columns accept integral floats (``"12.0"``); for a
        Parquet file the "line" in messages is the 1-based row number.

    Raises
    ------
    InputError
        For an unknown canonical name (listing the valid ones), a mapped source column missing from
        the file, a bad default, file-level problems and, in strict mode, the first bad row.
    """
    path = Path(path)
    source = str(path)
    _check_names(mapping, "mapping")
    for canonical, column in mapping.items():
        if not isinstance(column, str) or not column:
            raise InputError(
                f"mapping for {canonical!r} must be a source column name, got {column!r}",
                field=canonical,
            )
    defaults = dict(defaults or {})
    _check_names(defaults, "defaults")
    if "job_id" in defaults:
        raise InputError("job_id cannot have a default (ids must be unique)", field="job_id")
    fixed: dict[str, object] = {}
    for name in JOB_SCHEMA.names:
        if name in mapping or name == "job_id":
            continue
        if name in defaults:
            try:
                fixed[name] = _convert(name, defaults[name], name)
            except FieldError as exc:
                raise InputError(f"bad default: {exc.message}", field=name) from None
        elif name != "gpu_milli":
            fixed[name] = job_defaults()[name]
    derive_milli = "gpu_milli" not in mapping and "gpu_milli" not in defaults

    cols: dict[str, list[object]] = {name: [] for name in JOB_SCHEMA.names}
    errors = RowErrors(source, strict=strict)
    seen_ids: set[int] = set()
    lines: list[int] = []
    for index, (line, values) in enumerate(_source_rows(path, mapping, errors)):
        try:
            job: dict[str, object] = dict(fixed)
            for canonical, column in mapping.items():
                job[canonical] = _convert(canonical, values[column], column)
            if "job_id" not in mapping:
                job["job_id"] = index
            if derive_milli:
                job["gpu_milli"] = 1000 if _as_int(job["num_gpu"]) > 0 else 0
            check_gpu_shape(
                _as_int(job["num_gpu"]),
                _as_int(job["gpu_milli"]),
                milli_field=mapping.get("gpu_milli", "gpu_milli"),
            )
            job_id = _as_int(job["job_id"])
            if job_id in seen_ids:
                raise FieldError(
                    mapping.get("job_id", "job_id"),
                    f"duplicate job id {job_id}",
                    reason="duplicate job id",
                )
        except FieldError as exc:
            errors.bad_field(exc, row=line)
            continue
        seen_ids.add(job_id)
        lines.append(line)
        for name in JOB_SCHEMA.names:
            cols[name].append(job[name])
    jobs = jobs_table(cols)
    validate_jobs(jobs, source=source)
    meta: dict[str, MetaValue] = {
        "format": "table",
        "source": source,
        "mapping": ", ".join(f"{k}={v}" for k, v in mapping.items()),
    }
    return Trace(
        jobs=jobs,
        nodes=None,
        report=errors.report(jobs.num_rows),
        meta=meta,
        lines=np.asarray(lines, dtype=np.int64),
        fields=dict(mapping),
    )


def _source_rows(
    path: Path, mapping: Mapping[str, str], errors: RowErrors
) -> Iterator[tuple[int, Mapping[str, object]]]:
    """Yield ``(line, row)`` from a CSV or Parquet file, checking the mapped columns exist."""
    source = str(path)
    needed = list(dict.fromkeys(mapping.values()))
    owner = {column: canonical for canonical, column in mapping.items()}
    if path.suffix.lower() in (".parquet", ".pq"):
        if not path.is_file():
            raise InputError("file not found", source=source)
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"cannot read Parquet file ({exc})", source=source) from None
        for column in needed:
            if column not in table.schema.names:
                raise InputError(
                    f"missing column (mapped to {owner[column]!r}; the file has: "
                    f"{', '.join(table.schema.names)})",
                    source=source,
                    field=column,
                )
        data = {column: table.column(column).to_pylist() for column in needed}
        for i in range(table.num_rows):
            errors.rows_read += 1
            yield i + 1, {column: data[column][i] for column in needed}
        return
    try:
        yield from iter_csv(path, errors, needed, extra="ignore")
    except InputError as exc:
        if exc.row == 1 and exc.field in owner and exc.message.startswith("missing column"):
            raise InputError(
                f"missing column (mapped to {owner[exc.field]!r})",
                source=source,
                row=1,
                field=exc.field,
            ) from None
        raise
