"""The openb pod list (Alibaba cluster-trace-gpu-v2023) as a time-driven job trace.

The FGD experiments use the pod lists for static packing (see :mod:`cplat.traces.openb`); this
reader instead replays them in time. Mapping, one job per data row:

- ``job_id`` = the row's 0-based position among the file's data rows (skipped rows keep their
  numbers, so ids can have gaps; ``openb-pod-0042`` is job 42 in the released files);
- ``submit_time`` = ``creation_time``; ``duration`` = ``deletion_time - creation_time`` (the
  deletion time is the last time seen for pods still ``Running`` at collection time);
- one task (``num_tasks`` 1) with ``cpu_milli``, ``memory_mib``, ``num_gpu`` and ``gpu_milli`` as
  in the file; ``gpu_models`` = ``gpu_spec`` (``|``-separated; checked against the node list's
  models when one is given); ``queue`` = ``qos``; ``user``/``group`` from optional ``user`` and
  ``group`` columns, else ``""``; ``requested_time`` null; ``priority`` 0.

Rows without a ``creation_time`` or ``deletion_time`` are dropped (reasons
``"missing creation_time"`` / ``"missing deletion_time"``; counted, never an error). Bad rows (a
malformed number, ``deletion_time < creation_time``, GPU shape rules broken, an unknown GPU model,
the wrong number of fields) are skipped and counted by reason, or raise
:class:`~cplat.errors.InputError` with line and column when ``strict=True``. A pod list without
the time columns (the ``multigpu*`` files) cannot be replayed and raises.

The nodes come from the openb node list (:func:`~cplat.traces.openb.read_openb_nodes`, always
strict) converted to :data:`~cplat.traces.schema.NODE_SCHEMA`. ``meta`` counts the pods by
``pod_phase`` (``phase.Running``, ...).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa

from cplat.errors import InputError
from cplat.model import NodeTable
from cplat.traces.openb import POD_OPTIONAL, POD_REQUIRED, read_openb_nodes
from cplat.traces.trace import (
    FieldError,
    MetaValue,
    RowErrors,
    Trace,
    check_gpu_shape,
    iter_csv,
    jobs_table,
    nodes_table,
    parse_int,
    validate_jobs,
    validate_nodes,
)

__all__ = ["node_table_to_arrow", "read_openb_jobs"]

_TIME_COLUMNS = ("creation_time", "deletion_time")


def node_table_to_arrow(nodes: NodeTable) -> pa.Table:
    """Convert a :class:`~cplat.model.NodeTable` to a :data:`NODE_SCHEMA` table."""
    names = nodes.models.names
    return nodes_table(
        {
            "name": list(nodes.name),
            "cpu_milli": nodes.cpu_milli.tolist(),
            "memory_mib": nodes.memory_mib.tolist(),
            "num_gpu": nodes.num_gpu.tolist(),
            "gpu_model": [names[i] if i >= 0 else "" for i in nodes.gpu_model.tolist()],
            "rack": nodes.rack.tolist(),
            "spine": nodes.spine.tolist(),
        }
    )


def read_openb_jobs(
    pods_path: str | Path, nodes_path: str | Path | None = None, *, strict: bool = False
) -> Trace:
    """Read an openb pod list as a time-driven trace (see the module docstring for the rules).

    Parameters
    ----------
    pods_path
        A pod list with ``creation_time`` and ``deletion_time`` columns.
    nodes_path
        The node list; when given, the trace has nodes and ``gpu_spec`` models are checked.
    strict
        Raise at the first bad row instead of skipping it.

    Returns
    -------
    Trace
        Jobs in file order, nodes (or ``None``), report and meta.

    Raises
    ------
    InputError
        For file-level problems (missing file or column, bad node list) and, in strict mode, for
        the first bad row.
    """
    pods_path = Path(pods_path)
    source = str(pods_path)
    node_arrow: pa.Table | None = None
    models: frozenset[str] | None = None
    if nodes_path is not None:
        node_list = read_openb_nodes(nodes_path)
        node_arrow = node_table_to_arrow(node_list)
        validate_nodes(node_arrow, source=str(nodes_path))
        models = frozenset(node_list.models.names)
    errors = RowErrors(source, strict=strict)
    optional = tuple(c for c in POD_OPTIONAL if c not in _TIME_COLUMNS) + ("user", "group")
    cols: dict[str, list[object]] = {
        name: []
        for name in (
            "job_id",
            "submit_time",
            "duration",
            "cpu_milli",
            "memory_mib",
            "num_gpu",
            "gpu_milli",
            "gpu_models",
            "user",
            "group",
            "queue",
        )
    }
    phases: Counter[str] = Counter()
    lines: list[int] = []
    index = -1
    try:
        rows = iter_csv(pods_path, errors, POD_REQUIRED + _TIME_COLUMNS, optional)
        for line, row in rows:
            index += 1
            try:
                job = _pod_job(row, models)
            except FieldError as exc:
                errors.bad_field(exc, row=line)
                continue
            if job is None:
                missing = next(c for c in _TIME_COLUMNS if not row[c].strip())
                errors.drop(f"missing {missing}", "no time", row=line, field=missing)
                continue
            cols["job_id"].append(index)
            lines.append(line)
            for key, value in job.items():
                cols[key].append(value)
            phases[row.get("pod_phase", "").strip() or "(none)"] += 1
    except InputError as exc:
        if exc.row == 1 and exc.field in _TIME_COLUMNS:
            raise InputError(
                "missing column: a pod list without creation_time and deletion_time cannot be "
                "replayed in time (read it with read_openb_pods for static packing)",
                source=source,
                row=1,
                field=exc.field,
            ) from None
        raise
    jobs = jobs_table(cols)
    validate_jobs(jobs, source=source)
    meta: dict[str, MetaValue] = {"format": "openb", "source": source}
    if nodes_path is not None:
        meta["nodes_source"] = str(nodes_path)
    for phase, count in sorted(phases.items()):
        meta[f"phase.{phase}"] = count
    return Trace(
        jobs=jobs,
        nodes=node_arrow,
        report=errors.report(jobs.num_rows),
        meta=meta,
        lines=np.asarray(lines, dtype=np.int64),
        fields={"gpu_models": "gpu_spec", "queue": "qos"},
    )


def _pod_job(row: dict[str, str], models: frozenset[str] | None) -> dict[str, object] | None:
    """Map one pod row to job columns; ``None`` when a time is missing."""
    cpu = parse_int(row["cpu_milli"], field="cpu_milli")
    mem = parse_int(row["memory_mib"], field="memory_mib")
    ngpu = parse_int(row["num_gpu"], field="num_gpu", maximum=64)
    milli = parse_int(row["gpu_milli"], field="gpu_milli", maximum=1000)
    check_gpu_shape(ngpu, milli)
    spec_parts = [p.strip() for p in (row.get("gpu_spec") or "").split("|")]
    spec_parts = [p for p in spec_parts if p]
    if models is not None:
        for part in spec_parts:
            if part not in models:
                raise FieldError(
                    "gpu_spec",
                    f"unknown GPU model {part!r} (the cluster has: {', '.join(sorted(models))})",
                    reason="unknown GPU model",
                )
    created_text = row["creation_time"].strip()
    deleted_text = row["deletion_time"].strip()
    if not created_text or not deleted_text:
        return None
    created = parse_int(created_text, field="creation_time")
    deleted = parse_int(deleted_text, field="deletion_time")
    if deleted < created:
        raise FieldError(
            "deletion_time",
            f"deletion_time {deleted} is before creation_time {created}",
            reason="negative duration",
        )
    return {
        "submit_time": created,
        "duration": deleted - created,
        "cpu_milli": cpu,
        "memory_mib": mem,
        "num_gpu": ngpu,
        "gpu_milli": milli,
        "gpu_models": "|".join(spec_parts),
        "user": (row.get("user") or "").strip(),
        "group": (row.get("group") or "").strip(),
        "queue": (row.get("qos") or "").strip(),
    }
