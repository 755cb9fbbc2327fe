"""Shared machinery of the job-trace readers: reports, row errors, validation, Parquet, summaries.

Every reader turns a real trace into a :class:`Trace`: a jobs table in :data:`JOB_SCHEMA`, an
optional nodes table in :data:`NODE_SCHEMA`, a :class:`ReadReport` saying what was read and what
was skipped and why, and a ``meta`` dictionary of facts about the source (header values, how many
values were filled in, ...).

Rows are handled by a :class:`RowErrors` collector. A *bad* row (malformed or inconsistent
values) raises :class:`~cplat.errors.InputError` naming file, line and field in strict mode, and is
skipped and counted by reason otherwise. A *dropped* row is one a reader's documented rules leave
out on purpose (for example an SWF job with run time 0); it is counted in both modes and never
raises.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from cplat.errors import InputError
from cplat.traces._csv import read_rows
from cplat.traces.schema import JOB_SCHEMA, NODE_SCHEMA

__all__ = [
    "MAX_EXAMPLES",
    "FieldError",
    "ReadReport",
    "RowErrors",
    "Trace",
    "iter_csv",
    "jobs_table",
    "nodes_parquet_path",
    "nodes_table",
    "parse_float",
    "parse_int",
    "read_parquet",
    "read_trace_parquet",
    "summarize",
    "validate_jobs",
    "validate_nodes",
    "write_parquet",
]

#: How many example messages a :class:`ReadReport` keeps.
MAX_EXAMPLES = 5
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
MILLI = 1000
#: Largest float below which every integer is exact (2**53).
EXACT_FLOAT_MAX = float(2**53)

MetaValue = str | int | float


@dataclass(frozen=True)
class ReadReport:
    """What a reader did with its input.

    Attributes
    ----------
    source
        The file read.
    rows_read
        Data rows seen (header and comment lines not counted).
    rows_kept
        Rows that became jobs (or nodes).
    skipped
        Number of rows left out, by reason.
    examples
        The first few skip messages, each ``"FILE:LINE: column 'F': message"``.
    warnings
        File-level remarks (for example, that the rows were re-sorted).
    """

    source: str
    rows_read: int
    rows_kept: int
    skipped: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def rows_skipped(self) -> int:
        """Total number of rows left out."""
        return sum(self.skipped.values())

    def summary(self) -> str:
        """Return a short multi-line, human-readable account of the read."""
        lines = [
            f"{self.source}: {self.rows_read} rows read, {self.rows_kept} kept, "
            f"{self.rows_skipped} skipped"
        ]
        for reason, count in sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  skipped {count}: {reason}")
        for message in self.examples:
            lines.append(f"  e.g. {message}")
        for warning in self.warnings:
            lines.append(f"  warning: {warning}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Trace:
    """A trace in canonical form.

    Attributes
    ----------
    jobs
        Jobs, in :data:`~cplat.traces.schema.JOB_SCHEMA`.
    nodes
        The cluster, in :data:`~cplat.traces.schema.NODE_SCHEMA`, or ``None`` when the source does
        not describe it.
    report
        What was read and skipped.
    meta
        Facts about the source: ``format``, header values, counts of filled-in values, ...
    lines
        Per job, the line (CSV, SWF) or 1-based row (Parquet) of the source it came from, so
        that a later check (:func:`cplat.traces.feasible.screen_jobs`) can name it; ``None``
        when the reader does not say.
    fields
        Canonical job column -> the source column it came from (``num_gpu`` -> ``num_gpus``),
        for messages; columns not listed keep their canonical names.
    """

    jobs: pa.Table
    nodes: pa.Table | None
    report: ReadReport
    meta: dict[str, MetaValue] = field(default_factory=dict)
    lines: npt.NDArray[np.int64] | None = field(default=None, compare=False)
    fields: dict[str, str] = field(default_factory=dict)


class FieldError(ValueError):
    """A bad value in one field of one row; readers turn it into a skip or an ``InputError``.

    Parameters
    ----------
    field
        The column or field name.
    message
        What is wrong and what was expected.
    reason
        The skip reason to count it under (default ``"bad <field>"``).
    """

    def __init__(self, field: str, message: str, *, reason: str | None = None) -> None:
        self.field = field
        self.message = message
        self.reason = reason if reason is not None else f"bad {field}"
        super().__init__(f"column '{field}': {message}")


class RowErrors:
    """Collects row problems of one file: raise at the first one (strict) or skip and count.

    Parameters
    ----------
    source
        The file being read; it prefixes every message.
    strict
        Raise :class:`~cplat.errors.InputError` at the first bad row instead of skipping it.
    """

    def __init__(self, source: str, *, strict: bool) -> None:
        self.source = source
        self.strict = strict
        self.rows_read = 0
        self.skipped: Counter[str] = Counter()
        self.examples: list[str] = []
        self.warnings: list[str] = []

    def _count(self, reason: str, error: InputError) -> None:
        self.skipped[reason] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(str(error))

    def bad(
        self, message: str, *, row: int | None, field: str | None = None, reason: str | None = None
    ) -> None:
        """Record a malformed row: raise in strict mode, else skip it and count ``reason``.

        Raises
        ------
        InputError
            In strict mode, naming file, line and field.
        """
        error = InputError(message, source=self.source, row=row, field=field)
        if self.strict:
            raise error
        if reason is None:
            reason = f"bad {field}" if field is not None else "bad row"
        self._count(reason, error)

    def bad_field(self, exc: FieldError, *, row: int | None) -> None:
        """Record a :class:`FieldError` found on line ``row`` (see :meth:`bad`)."""
        self.bad(exc.message, row=row, field=exc.field, reason=exc.reason)

    def drop(self, reason: str, message: str, *, row: int | None, field: str | None = None) -> None:
        """Count a row left out by a documented rule; never raises, even in strict mode."""
        self._count(reason, InputError(message, source=self.source, row=row, field=field))

    def warn(self, message: str) -> None:
        """Add a file-level warning to the report."""
        self.warnings.append(message)

    def report(self, rows_kept: int) -> ReadReport:
        """Return the :class:`ReadReport` for ``rows_kept`` kept rows."""
        return ReadReport(
            source=self.source,
            rows_read=self.rows_read,
            rows_kept=rows_kept,
            skipped=dict(self.skipped),
            examples=list(self.examples),
            warnings=list(self.warnings),
        )


# ---------------------------------------------------------------------------------------------
# Value parsing


def parse_int(
    value: object,
    *,
    field: str,
    minimum: int | None = 0,
    maximum: int = INT64_MAX,
    allow_float: bool = True,
) -> int:
    """Parse an integer from text (or a Python number), raising :class:`FieldError`.

    Parameters
    ----------
    value
        Text such as ``"12"`` or ``"12.0"``, or an ``int``/``float``.
    field
        Column name for the error.
    minimum, maximum
        Inclusive bounds (``minimum=None``: no lower bound).
    allow_float
        Accept integral floats such as ``"12.0"`` (common in files written by dataframes).

    Raises
    ------
    FieldError
        For empty, non-numeric, fractional or out-of-range values.
    """
    number: int
    if isinstance(value, bool):
        raise FieldError(field, f"expected an integer, got {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if not (allow_float and math.isfinite(value) and value.is_integer()):
            raise FieldError(field, f"expected an integer, got {value!r}")
        number = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            raise FieldError(field, "expected an integer, got an empty value")
        try:
            number = int(text)
        except ValueError:
            try:
                as_float = float(text)
            except ValueError:
                raise FieldError(field, f"expected an integer, got {text!r}") from None
            if not (allow_float and math.isfinite(as_float) and as_float.is_integer()):
                raise FieldError(field, f"expected an integer, got {text!r}") from None
            number = int(as_float)
    elif value is None:
        raise FieldError(field, "expected an integer, got an empty value")
    else:
        raise FieldError(field, f"expected an integer, got {value!r}")
    if minimum is not None and number < minimum:
        what = "a non-negative integer" if minimum == 0 else f"an integer >= {minimum}"
        raise FieldError(field, f"expected {what}, got {number}")
    if number > maximum:
        raise FieldError(field, f"expected at most {maximum}, got {number}")
    return number


def parse_float(
    value: object, *, field: str, minimum: float | None = 0.0, maximum: float = EXACT_FLOAT_MAX
) -> float:
    """Parse a finite number from text (or a Python number), raising :class:`FieldError`.

    ``maximum`` (default 2**53, the largest range where floats hold every integer) keeps
    values convertible to the int64 columns.

    Raises
    ------
    FieldError
        For empty, non-numeric, NaN, infinite or too small values.
    """
    number: float
    if isinstance(value, bool) or value is None:
        raise FieldError(
            field, f"expected a number, got {'an empty value' if value is None else repr(value)}"
        )
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            raise FieldError(field, "expected a number, got an empty value")
        try:
            number = float(text)
        except ValueError:
            raise FieldError(field, f"expected a number, got {text!r}") from None
    else:
        raise FieldError(field, f"expected a number, got {value!r}")
    if not math.isfinite(number):
        raise FieldError(field, f"expected a finite number, got {value!r}")
    if minimum is not None and number < minimum:
        what = "a non-negative number" if minimum == 0 else f"a number >= {minimum}"
        raise FieldError(field, f"expected {what}, got {number:g}")
    if number > maximum:
        raise FieldError(field, f"expected at most {maximum:g}, got {number:g}")
    return number


def check_gpu_shape(num_gpu: int, gpu_milli: int, *, milli_field: str = "gpu_milli") -> None:
    """Check the GPU request rules of :data:`JOB_SCHEMA`, raising :class:`FieldError`.

    ``num_gpu == 0`` needs ``gpu_milli == 0``; ``num_gpu == 1`` needs ``0 < gpu_milli <= 1000``;
    ``num_gpu > 1`` needs whole devices, ``gpu_milli == 1000``.
    """
    if num_gpu == 0 and gpu_milli != 0:
        raise FieldError(milli_field, f"gpu_milli is {gpu_milli} but num_gpu is 0")
    if num_gpu == 1 and not 0 < gpu_milli <= MILLI:
        raise FieldError(milli_field, f"one GPU needs 0 < gpu_milli <= 1000, got {gpu_milli}")
    if num_gpu > 1 and gpu_milli != MILLI:
        raise FieldError(
            milli_field,
            f"a task with {num_gpu} GPUs must take whole devices (gpu_milli 1000), got {gpu_milli}",
        )


# ---------------------------------------------------------------------------------------------
# CSV rows


def iter_csv(
    path: Path,
    errors: RowErrors,
    required: Sequence[str],
    optional: Sequence[str] = (),
    *,
    extra: Literal["error", "ignore"] = "error",
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line_number, row)`` for each well-formed data row of a CSV file (plain or .gz).

    Header problems (missing file, missing or duplicate column, unknown column when ``extra`` is
    ``"error"``) always raise. A row with the wrong number of fields is a bad row for ``errors``
    (skipped and counted, or raised in strict mode). Blank lines are ignored; every other data row
    counts in ``errors.rows_read``.

    Raises
    ------
    InputError
        For file-level problems, and for bad rows in strict mode.
    """

    def count() -> None:
        errors.rows_read += 1

    def ragged(message: str, line: int) -> None:
        errors.bad(message, row=line, reason="wrong field count")

    yield from read_rows(path, required, optional, extra=extra, on_row=count, on_ragged=ragged)


# ---------------------------------------------------------------------------------------------
# Tables

_JOB_DEFAULTS: dict[str, object] = {
    "submit_time": 0,
    "duration": 0,
    "requested_time": None,
    "num_tasks": 1,
    "cpu_milli": 0,
    "memory_mib": 0,
    "num_gpu": 0,
    "gpu_milli": 0,
    "gpu_models": "",
    "user": "",
    "group": "",
    "priority": 0,
    "queue": "",
}


def job_defaults() -> dict[str, object]:
    """Return the value each :data:`JOB_SCHEMA` column takes when a reader has none."""
    return dict(_JOB_DEFAULTS)


def jobs_table(columns: Mapping[str, Sequence[object]]) -> pa.Table:
    """Build a :data:`JOB_SCHEMA` table from Python columns; absent columns take the defaults.

    ``columns`` must include ``job_id``. Defaults: ``requested_time`` null, ``num_tasks`` 1,
    strings ``""``, other integers 0.
    """
    if "job_id" not in columns:
        raise ValueError("jobs_table needs a job_id column")
    unknown = set(columns) - set(JOB_SCHEMA.names)
    if unknown:
        raise ValueError(f"unknown job columns: {sorted(unknown)}")
    n = len(columns["job_id"])
    arrays: list[pa.Array[Any]] = []
    for f in JOB_SCHEMA:
        values = columns[f.name] if f.name in columns else [_JOB_DEFAULTS[f.name]] * n
        if len(values) != n:
            raise ValueError(f"job column {f.name} has {len(values)} values, expected {n}")
        arrays.append(pa.array(values, type=f.type))
    return pa.Table.from_arrays(arrays, schema=JOB_SCHEMA)


def nodes_table(columns: Mapping[str, Sequence[object]]) -> pa.Table:
    """Build a :data:`NODE_SCHEMA` table from Python columns; ``rack``/``spine`` default to 0."""
    n = len(columns["name"])
    arrays: list[pa.Array[Any]] = []
    for f in NODE_SCHEMA:
        if f.name in columns:
            values = columns[f.name]
        elif f.name in ("rack", "spine", "memory_mib"):
            values = [0] * n
        elif f.name == "gpu_model":
            values = [""] * n
        else:
            raise ValueError(f"nodes_table needs a {f.name} column")
        arrays.append(pa.array(values, type=f.type))
    return pa.Table.from_arrays(arrays, schema=NODE_SCHEMA)


def _schema_problems(table: pa.Table, schema: pa.Schema) -> list[str]:
    problems: list[str] = []
    names = table.schema.names
    missing = [n for n in schema.names if n not in names]
    extra = [n for n in names if n not in schema.names]
    if missing:
        problems.append(f"missing columns {missing}")
    if extra:
        problems.append(f"unexpected columns {extra}")
    for f in schema:
        if f.name not in names:
            continue
        got = table.schema.field(f.name)
        if not got.type.equals(f.type):
            problems.append(f"column {f.name!r} has type {got.type}, expected {f.type}")
        elif got.nullable != f.nullable:
            problems.append(
                f"column {f.name!r} is {'nullable' if got.nullable else 'non-nullable'}, "
                f"expected {'nullable' if f.nullable else 'non-nullable'}"
            )
    if not problems and names != schema.names:
        problems.append(f"columns out of order: {names}, expected {schema.names}")
    return problems


def _ints(table: pa.Table, name: str) -> npt.NDArray[np.int64]:
    column = table.column(name)
    if column.null_count:
        column = column.fill_null(pa.scalar(0, column.type))
    return np.asarray(column.to_numpy(), dtype=np.int64)


def _check_common(table: pa.Table, schema: pa.Schema, source: str, what: str) -> None:
    problems = _schema_problems(table, schema)
    if problems:
        raise InputError(f"not a cplat {what} table: " + "; ".join(problems), source=source)
    for f in schema:
        column = table.column(f.name)
        if not f.nullable and column.null_count:
            raise InputError(
                f"{column.null_count} null values in a non-nullable column",
                source=source,
                field=f.name,
            )
        if pa.types.is_integer(f.type):
            values = _ints(table, f.name)
            bad = np.flatnonzero(values < 0)
            if bad.size:
                i = int(bad[0])
                raise InputError(
                    f"negative value {int(values[i])} at row index {i} "
                    f"({bad.size} negative values in all)",
                    source=source,
                    field=f.name,
                )


def _first_duplicate(values: Sequence[object]) -> tuple[int, object] | None:
    seen: set[object] = set()
    for i, value in enumerate(values):
        if value in seen:
            return i, value
        seen.add(value)
    return None


def validate_jobs(table: pa.Table, *, source: str = "jobs table") -> None:
    """Check a jobs table against :data:`JOB_SCHEMA` and its value rules.

    Rules: the schema matches (names, order, types, nullability; metadata is ignored); no nulls
    outside ``requested_time``; integers are non-negative; job ids are unique; ``num_tasks >= 1``;
    ``num_gpu == 0`` implies ``gpu_milli == 0``; ``num_gpu == 1`` implies
    ``0 < gpu_milli <= 1000``; ``num_gpu > 1`` implies ``gpu_milli == 1000``.

    Raises
    ------
    InputError
        Naming the column and the first offending row index.
    """
    _check_common(table, JOB_SCHEMA, source, "jobs")
    ids = _ints(table, "job_id")
    if np.unique(ids).size != ids.size:
        dup = _first_duplicate(ids.tolist())
        assert dup is not None
        raise InputError(
            f"duplicate job id {dup[1]} at row index {dup[0]}", source=source, field="job_id"
        )
    tasks = _ints(table, "num_tasks")
    bad = np.flatnonzero(tasks < 1)
    if bad.size:
        raise InputError(
            f"num_tasks must be >= 1, got {int(tasks[bad[0]])} at row index {int(bad[0])}",
            source=source,
            field="num_tasks",
        )
    ngpu = _ints(table, "num_gpu")
    milli = _ints(table, "gpu_milli")
    rules = (
        ((ngpu == 0) & (milli != 0), "num_gpu 0 needs gpu_milli 0"),
        ((ngpu == 1) & ((milli <= 0) | (milli > MILLI)), "num_gpu 1 needs 0 < gpu_milli <= 1000"),
        ((ngpu > 1) & (milli != MILLI), "num_gpu > 1 needs whole devices (gpu_milli 1000)"),
    )
    for mask, rule in rules:
        bad = np.flatnonzero(mask)
        if bad.size:
            i = int(bad[0])
            raise InputError(
                f"{rule}; row index {i} has num_gpu {int(ngpu[i])}, gpu_milli {int(milli[i])}",
                source=source,
                field="gpu_milli",
            )


def validate_nodes(table: pa.Table, *, source: str = "nodes table") -> None:
    """Check a nodes table against :data:`NODE_SCHEMA` and its value rules.

    Rules: the schema matches (metadata ignored); no nulls; integers are non-negative; names are
    non-empty and unique; a node with GPUs names exactly one GPU model (no ``|``).

    Raises
    ------
    InputError
        Naming the column and the first offending row index.
    """
    _check_common(table, NODE_SCHEMA, source, "nodes")
    names = table.column("name").to_pylist()
    for i, name in enumerate(names):
        if not name:
            raise InputError(f"empty node name at row index {i}", source=source, field="name")
    dup = _first_duplicate(names)
    if dup is not None:
        raise InputError(
            f"duplicate node name {dup[1]!r} at row index {dup[0]}", source=source, field="name"
        )
    ngpu = _ints(table, "num_gpu")
    for i, model in enumerate(str(m) for m in table.column("gpu_model").to_pylist()):
        if ngpu[i] > 0 and not model:
            raise InputError(
                f"node at row index {i} has {int(ngpu[i])} GPUs but no GPU model",
                source=source,
                field="gpu_model",
            )
        if "|" in model:
            raise InputError(
                f"node at row index {i} names several GPU models ({model!r})",
                source=source,
                field="gpu_model",
            )


# ---------------------------------------------------------------------------------------------
# Parquet


def nodes_parquet_path(path: str | Path) -> Path:
    """Return the nodes file beside a jobs file: ``X.parquet`` -> ``X.nodes.parquet``."""
    path = Path(path)
    if path.suffix == ".parquet":
        return path.with_suffix(".nodes.parquet")
    return path.with_name(path.name + ".nodes.parquet")


def _kind_of(table: pa.Table) -> Literal["jobs", "nodes"]:
    tag = (table.schema.metadata or {}).get(b"cplat.schema", b"").decode("utf-8", "replace")
    if tag.startswith("nodes/"):
        return "nodes"
    if tag.startswith("jobs/"):
        return "jobs"
    names = set(table.schema.names)
    return "nodes" if "name" in names and "job_id" not in names else "jobs"


def write_parquet(trace_or_table: Trace | pa.Table, path: str | Path) -> list[Path]:
    """Validate and write a trace or a table to Parquet; return the files written.

    A :class:`Trace` writes its jobs to ``path`` (with ``meta`` as JSON under the schema metadata
    key ``cplat.meta``) and, when it has nodes, the nodes to :func:`nodes_parquet_path`. A table
    must be a jobs or a nodes table and is written to ``path``.

    Raises
    ------
    InputError
        When a table breaks its schema rules or the file cannot be written.
    """
    path = Path(path)
    outputs: list[tuple[pa.Table, Path]] = []
    if isinstance(trace_or_table, Trace):
        validate_jobs(trace_or_table.jobs, source=str(path))
        metadata = dict(JOB_SCHEMA.metadata or {})
        metadata[b"cplat.meta"] = json.dumps(trace_or_table.meta, sort_keys=True).encode()
        outputs.append((trace_or_table.jobs.replace_schema_metadata(metadata), path))
        if trace_or_table.nodes is not None:
            node_path = nodes_parquet_path(path)
            validate_nodes(trace_or_table.nodes, source=str(node_path))
            outputs.append((trace_or_table.nodes, node_path))
    else:
        if _kind_of(trace_or_table) == "nodes":
            validate_nodes(trace_or_table, source=str(path))
        else:
            validate_jobs(trace_or_table, source=str(path))
        outputs.append((trace_or_table, path))
    written: list[Path] = []
    for table, target in outputs:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, target)
        except OSError as exc:
            raise InputError(f"cannot write Parquet file ({exc})", source=str(target)) from None
        written.append(target)
    return written


def read_parquet(path: str | Path, *, kind: Literal["jobs", "nodes"] | None = None) -> pa.Table:
    """Read a jobs or nodes table from Parquet and check it.

    Parameters
    ----------
    path
        The file.
    kind
        ``"jobs"`` or ``"nodes"``; by default taken from the schema metadata (``cplat.schema``) or
        the column names.

    Returns
    -------
    pyarrow.Table
        The table, in the canonical schema (columns reordered and integer widths cast safely when
        needed, metadata reset to the canonical one).

    Raises
    ------
    InputError
        For a missing or unreadable file, a column missing, unexpected or of the wrong type, or a
        value that breaks the schema rules.
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise InputError("file not found", source=source)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read Parquet file ({exc})", source=source) from None
    which = kind if kind is not None else _kind_of(table)
    schema = JOB_SCHEMA if which == "jobs" else NODE_SCHEMA
    names = table.schema.names
    missing = [n for n in schema.names if n not in names]
    extra = [n for n in names if n not in schema.names]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing columns {missing}")
        if extra:
            parts.append(f"unexpected columns {extra}")
        raise InputError(f"not a cplat {which} table: " + "; ".join(parts), source=source)
    arrays: list[pa.ChunkedArray[Any]] = []
    for f in schema:
        column = table.column(f.name)
        if not f.nullable and column.null_count:
            raise InputError(
                f"{column.null_count} null values in a non-nullable column",
                source=source,
                field=f.name,
            )
        same_kind = (pa.types.is_integer(column.type) and pa.types.is_integer(f.type)) or (
            pa.types.is_string(f.type)
            and (pa.types.is_string(column.type) or pa.types.is_large_string(column.type))
        )
        if not same_kind:
            raise InputError(
                f"column has type {column.type}, expected {f.type}", source=source, field=f.name
            )
        try:
            arrays.append(column.cast(f.type, safe=True))
        except pa.ArrowInvalid as exc:
            raise InputError(
                f"values do not fit {f.type} ({exc})", source=source, field=f.name
            ) from None
    result = pa.Table.from_arrays(arrays, schema=schema)
    if which == "jobs":
        validate_jobs(result, source=source)
    else:
        validate_nodes(result, source=source)
    return result


def read_trace_parquet(path: str | Path) -> Trace:
    """Read a trace written by :func:`write_parquet` (``cplat trace convert``) back.

    The jobs come from ``path``; the nodes from :func:`nodes_parquet_path` when that file exists
    (otherwise ``nodes`` is ``None``); ``meta`` from the JSON the writer stored under
    ``cplat.meta`` (a file without it, or with unreadable JSON, gets ``{"format": "parquet"}``
    and a warning). Every row is kept: the file was checked when it was written and is checked
    again here as a whole (:func:`read_parquet`), so a bad table is an error, not skipped rows.

    Raises
    ------
    InputError
        For a missing or unreadable file, or a jobs or nodes table that breaks its schema.
    """
    path = Path(path)
    source = str(path)
    jobs = read_parquet(path, kind="jobs")
    node_path = nodes_parquet_path(path)
    nodes = read_parquet(node_path, kind="nodes") if node_path.is_file() else None
    warnings: list[str] = []
    meta: dict[str, MetaValue] = {}
    try:
        stored = (pq.read_schema(path).metadata or {}).get(b"cplat.meta")
    except (OSError, pa.ArrowException):  # read_parquet just read it; be safe anyway
        stored = None
    if stored is not None:
        try:
            loaded = json.loads(stored)
        except ValueError:
            loaded = None
        if isinstance(loaded, dict):
            meta = {str(k): v for k, v in loaded.items() if isinstance(v, str | int | float)}
        else:
            warnings.append("the stored cplat.meta is not a JSON object; ignored")
    # Keep what the converted file was; "format" and "source" now describe this file.
    meta["source_format"] = str(meta.get("format", "unknown"))
    if "source" in meta:
        meta["converted_from"] = meta["source"]
    meta["format"] = "parquet"
    meta["source"] = source
    report = ReadReport(
        source=source, rows_read=jobs.num_rows, rows_kept=jobs.num_rows, warnings=warnings
    )
    lines = np.arange(1, jobs.num_rows + 1, dtype=np.int64)
    return Trace(jobs=jobs, nodes=nodes, report=report, meta=meta, lines=lines)


# ---------------------------------------------------------------------------------------------
# Summary


def summarize(jobs: pa.Table, nodes: pa.Table | None = None) -> dict[str, object]:
    """Return headline numbers of a jobs table (and its nodes).

    Keys: ``jobs``; ``submit_first``, ``submit_last``, ``span_s``, ``span_days``;
    ``duration_mean_s``, ``duration_max_s``; ``users``, ``groups``, ``queues`` (distinct non-empty
    values); ``tasks_total``, ``tasks_max``; ``cpu_milli_max`` (per task), ``core_seconds``
    (sum of tasks x cpu x duration, in core-seconds); ``gpu_jobs``, ``gpu_job_share``,
    ``shared_gpu_jobs`` (one GPU, < 1000 milli), ``gpu_seconds``; ``requested_known``,
    ``requested_coverage``; and with nodes ``nodes``, ``node_cores``, ``node_memory_mib``,
    ``node_gpus``, ``gpu_models`` (``"MODEL:count, ..."`` by GPUs).
    """
    n = jobs.num_rows
    out: dict[str, object] = {"jobs": n}
    if n:
        submit = _ints(jobs, "submit_time")
        duration = _ints(jobs, "duration")
        tasks = _ints(jobs, "num_tasks")
        cpu = _ints(jobs, "cpu_milli")
        ngpu = _ints(jobs, "num_gpu")
        milli = _ints(jobs, "gpu_milli")
        first, last = int(submit.min()), int(submit.max())
        gpu_jobs = int(np.count_nonzero(ngpu > 0))
        known = n - jobs.column("requested_time").null_count
        out.update(
            submit_first=first,
            submit_last=last,
            span_s=last - first,
            span_days=round((last - first) / 86400, 2),
            duration_mean_s=round(float(duration.mean()), 1),
            duration_max_s=int(duration.max()),
            users=len({u for u in jobs.column("user").to_pylist() if u}),
            groups=len({g for g in jobs.column("group").to_pylist() if g}),
            queues=len({q for q in jobs.column("queue").to_pylist() if q}),
            tasks_total=int(tasks.sum()),
            tasks_max=int(tasks.max()),
            cpu_milli_max=int(cpu.max()),
            core_seconds=float((tasks * cpu / MILLI * duration).sum()),
            gpu_jobs=gpu_jobs,
            gpu_job_share=round(gpu_jobs / n, 4),
            shared_gpu_jobs=int(np.count_nonzero((ngpu == 1) & (milli < MILLI))),
            gpu_seconds=float((tasks * ngpu * milli / MILLI * duration).sum()),
            requested_known=known,
            requested_coverage=round(known / n, 4),
        )
    if nodes is not None:
        node_gpus = _ints(nodes, "num_gpu")
        by_model: Counter[str] = Counter()
        for model, count in zip(
            [str(m) for m in nodes.column("gpu_model").to_pylist()], node_gpus.tolist(), strict=True
        ):
            if count:
                by_model[model] += count
        out.update(
            nodes=nodes.num_rows,
            node_cores=float(_ints(nodes, "cpu_milli").sum() / MILLI),
            node_memory_mib=int(_ints(nodes, "memory_mib").sum()),
            node_gpus=int(node_gpus.sum()),
            gpu_models=", ".join(f"{m}:{c}" for m, c in by_model.most_common()),
        )
    return out
