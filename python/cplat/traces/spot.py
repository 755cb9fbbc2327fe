"""Reader for the node list of the Alibaba spot-GPU trace (cluster-trace-v2026-spot-gpu).

``node_info_df.csv`` has columns ``gpu_model, gpu_capacity_num, cpu_num, node_name``. Mapping to
:data:`~cplat.traces.schema.NODE_SCHEMA`: ``name`` = ``node_name``, ``cpu_milli`` =
``cpu_num x 1000``, ``num_gpu`` = ``gpu_capacity_num``, ``gpu_model`` = ``gpu_model`` (``""`` on a
node without GPUs), ``rack`` and ``spine`` 0. **Memory is not in the release**, so ``memory_mib``
is 0 on every node: memory-aware placement on this cluster needs an assumed per-node value.

Bad rows (an empty or duplicate name, a malformed number, a GPU node without a model, a model
with ``|``, the wrong number of fields) are skipped and reported through a Python
:class:`UserWarning` with the skip counts, or raise :class:`~cplat.errors.InputError` with line and
column when ``strict=True``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pyarrow as pa

from cplat.errors import InputError
from cplat.traces.trace import (
    FieldError,
    RowErrors,
    iter_csv,
    nodes_table,
    parse_int,
    validate_nodes,
)

__all__ = ["SPOT_COLUMNS", "read_spot_nodes"]

SPOT_COLUMNS = ("gpu_model", "gpu_capacity_num", "cpu_num", "node_name")


def read_spot_nodes(path: str | Path, *, strict: bool = False) -> pa.Table:
    """Read the spot-GPU node list into a :data:`NODE_SCHEMA` table (memory 0: not released).

    Parameters
    ----------
    path
        ``node_info_df.csv`` (plain or ``.gz``).
    strict
        Raise at the first bad row instead of skipping it (with a warning).

    Returns
    -------
    pyarrow.Table
        One row per node, in file order.

    Raises
    ------
    InputError
        For file-level problems, a file without nodes and, in strict mode, for the first bad row.
    """
    path = Path(path)
    source = str(path)
    errors = RowErrors(source, strict=strict)
    cols: dict[str, list[object]] = {"name": [], "cpu_milli": [], "num_gpu": [], "gpu_model": []}
    seen: set[str] = set()
    for line, row in iter_csv(path, errors, SPOT_COLUMNS):
        try:
            name = row["node_name"].strip()
            if not name:
                raise FieldError("node_name", "empty node name")
            if name in seen:
                raise FieldError(
                    "node_name", f"duplicate node name {name!r}", reason="duplicate node name"
                )
            cpus = parse_int(row["cpu_num"], field="cpu_num", maximum=2**40)
            gpus = parse_int(row["gpu_capacity_num"], field="gpu_capacity_num", maximum=64)
            model = row["gpu_model"].strip()
            if gpus > 0 and not model:
                raise FieldError("gpu_model", "a node with GPUs needs a GPU model")
            if "|" in model:
                raise FieldError("gpu_model", "a node has exactly one GPU model")
        except FieldError as exc:
            errors.bad_field(exc, row=line)
            continue
        seen.add(name)
        cols["name"].append(name)
        cols["cpu_milli"].append(cpus * 1000)
        cols["num_gpu"].append(gpus)
        cols["gpu_model"].append(model if gpus > 0 else "")
    if not cols["name"]:
        raise InputError("no nodes in file", source=source)
    table = nodes_table(cols)
    validate_nodes(table, source=source)
    report = errors.report(table.num_rows)
    if report.skipped:
        warnings.warn(report.summary(), UserWarning, stacklevel=2)
    return table
