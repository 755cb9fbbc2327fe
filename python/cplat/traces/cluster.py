"""Cluster descriptions: the node lists ``cplat sim --cluster`` reads, by kind or by their header.

``KIND:PATH`` names the reader (:data:`CLUSTER_KINDS`); a bare path is recognised by its suffix
(``.parquet``) or by its CSV header, so a machine list can be given as published:

- ``openb``: an openb node list (``sn, cpu_milli, memory_mib, gpu, model``);
- ``spot``: the Alibaba spot-GPU ``node_info_df.csv`` (``gpu_model, gpu_capacity_num, cpu_num,
  node_name``);
- ``philly``: a machine list of the Philly form (``machineId, number of GPUs, single GPU mem``,
  the trace's ``cluster_machine_list``; see :func:`read_philly_machines`);
- ``parquet``: a nodes table in :data:`~cplat.traces.schema.NODE_SCHEMA` (what
  ``cplat trace convert`` writes beside a trace that has nodes).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pyarrow as pa

from cplat.errors import InputError
from cplat.model import NodeTable
from cplat.traces._csv import open_text
from cplat.traces.trace import (
    FieldError,
    RowErrors,
    iter_csv,
    nodes_table,
    parse_int,
    validate_nodes,
)

__all__ = [
    "CLUSTER_KINDS",
    "PHILLY_MACHINE_COLUMNS",
    "load_cluster",
    "read_philly_machines",
]

#: Cluster kinds accepted in ``KIND:PATH``, with what they read.
CLUSTER_KINDS: dict[str, str] = {
    "openb": "openb node list (sn, cpu_milli, memory_mib, gpu, model)",
    "spot": "Alibaba spot-GPU node_info_df.csv (gpu_model, gpu_capacity_num, cpu_num, node_name)",
    "philly": "Philly machine list (machineId, number of GPUs, single GPU mem)",
    "parquet": "cplat nodes table (.parquet)",
}

PHILLY_MACHINE_COLUMNS = ("machineId", "number of GPUs", "single GPU mem")
_SPOT_COLUMNS = frozenset(("gpu_model", "gpu_capacity_num", "cpu_num", "node_name"))
# "24G", "12 GB", "11.5GiB", "16384M": a number and an optional binary or decimal unit.
_GPU_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)\s*([GMT])(?:i?B)?$", re.IGNORECASE)
#: Most GPUs one machine may have (the engine's per-node device limit).
MAX_GPUS_PER_MACHINE = 64


def read_philly_machines(path: str | Path, *, strict: bool = False) -> pa.Table:
    """Read a machine list of the Philly form into a :data:`NODE_SCHEMA` table.

    The Philly trace's ``cluster_machine_list`` is a CSV with the header ``machineId, number of
    GPUs, single GPU mem`` (spaces around names are ignored) and rows such as ``m1,8,24G``.
    Mapping: ``name`` = ``machineId``; ``num_gpu`` = ``number of GPUs``; ``gpu_model`` = the GPU
    memory, normalised to ``<number><unit>`` (``24G``): the trace names no GPU models, and the
    memory is what tells its machine types apart. CPU and memory are not in the list:
    ``cpu_milli`` and ``memory_mib`` are 0 ("not given"; the simulator then leaves CPU and memory
    requests unchecked, see :func:`cplat.traces.feasible.screen_jobs`); ``rack``/``spine`` 0.

    Bad rows (an empty or duplicate machine id, a malformed or negative GPU count, more than
    64 GPUs, a machine with GPUs but no GPU memory, a memory that is not a size) are skipped and
    reported in a :class:`UserWarning` with the counts, or raise with line and column when
    ``strict=True``.

    Raises
    ------
    InputError
        For file-level problems, a list without machines and, in strict mode, the first bad row.
    """
    path = Path(path)
    source = str(path)
    errors = RowErrors(source, strict=strict)
    cols: dict[str, list[object]] = {"name": [], "cpu_milli": [], "num_gpu": [], "gpu_model": []}
    seen: set[str] = set()
    for line, row in iter_csv(path, errors, PHILLY_MACHINE_COLUMNS):
        try:
            name = row["machineId"].strip()
            if not name:
                raise FieldError("machineId", "empty machine id")
            if name in seen:
                raise FieldError(
                    "machineId", f"duplicate machine id {name!r}", reason="duplicate machine id"
                )
            gpus = parse_int(
                row["number of GPUs"], field="number of GPUs", maximum=MAX_GPUS_PER_MACHINE
            )
            memory = row["single GPU mem"].strip()
            model = ""
            if memory:
                match = _GPU_MEMORY.match(memory)
                if match is None:
                    raise FieldError(
                        "single GPU mem", f"expected a memory size like 24G, got {memory!r}"
                    )
                model = f"{match.group(1)}{match.group(2).upper()}"
            if gpus > 0 and not model:
                raise FieldError("single GPU mem", "a machine with GPUs needs its GPU memory")
        except FieldError as exc:
            errors.bad_field(exc, row=line)
            continue
        seen.add(name)
        cols["name"].append(name)
        cols["cpu_milli"].append(0)
        cols["num_gpu"].append(gpus)
        cols["gpu_model"].append(model if gpus > 0 else "")
    if not cols["name"]:
        raise InputError("no machines in file", source=source)
    table = nodes_table(cols)
    validate_nodes(table, source=source)
    report = errors.report(table.num_rows)
    if report.skipped:
        warnings.warn(report.summary(), UserWarning, stacklevel=2)
    return table


def _sniff(path: Path) -> str:
    """Return the kind of a node file from its suffix or its CSV header (default ``openb``)."""
    if path.suffix.lower() in (".parquet", ".pq"):
        return "parquet"
    if not path.is_file():
        raise InputError("file not found", source=str(path))
    try:
        with open_text(path) as fh:
            first = fh.readline()
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text ({exc.reason})", source=str(path)) from None
    except (OSError, EOFError) as exc:
        raise InputError(f"cannot read file ({exc})", source=str(path)) from None
    header = {h.strip() for h in first.strip().split(",")}
    if set(PHILLY_MACHINE_COLUMNS) <= header:
        return "philly"
    if _SPOT_COLUMNS <= header:
        return "spot"
    return "openb"


def load_cluster(spec: str, *, strict: bool = False) -> NodeTable:
    """Read the cluster named by ``spec``: ``KIND:PATH`` or a path (see the module docstring).

    Parameters
    ----------
    spec
        ``philly:FILE``, ``spot:FILE``, ``openb:FILE``, ``parquet:FILE`` or a bare path, whose
        kind is taken from its suffix or header.
    strict
        Raise at the first bad row of a ``spot`` or ``philly`` list instead of skipping it.

    Raises
    ------
    InputError
        For an empty spec and any reader error (naming the file, line and column).
    """
    from cplat.scheduler import nodes_from_table

    kind, sep, rest = spec.partition(":")
    if sep and kind.strip().lower() in CLUSTER_KINDS:
        kind, path = kind.strip().lower(), Path(rest)
        if not rest.strip():
            raise InputError(f"missing path after {kind!r}:", field="--cluster")
    else:
        if not spec.strip():
            raise InputError("expected a node file or KIND:PATH", field="--cluster")
        path = Path(spec)
        kind = _sniff(path)
    if kind == "openb":
        from cplat.traces.openb import read_openb_nodes

        return read_openb_nodes(path)
    if kind == "spot":
        from cplat.traces.spot import read_spot_nodes

        return nodes_from_table(read_spot_nodes(path, strict=strict))
    if kind == "philly":
        return nodes_from_table(read_philly_machines(path, strict=strict))
    from cplat.traces.trace import read_parquet

    return nodes_from_table(read_parquet(path, kind="nodes"))
