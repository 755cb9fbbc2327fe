"""Load a job trace by kind: the one entry point the CLI, the simulator and tools share.

``KIND:PATH`` names a reader (:data:`TRACE_KINDS`) and a file; :func:`load_trace` runs the reader
and returns its :class:`~cplat.traces.trace.Trace`.
"""

from __future__ import annotations

from pathlib import Path

from cplat.errors import InputError
from cplat.traces.trace import Trace

__all__ = ["TRACE_KINDS", "load_trace", "parse_trace_spec"]

#: Trace kinds accepted in ``KIND:PATH``, with what they read.
TRACE_KINDS: dict[str, str] = {
    "swf": "Parallel Workloads Archive SWF log (plain or .gz)",
    "openb": "openb pod list (Alibaba GPU v2023) replayed in time; --nodes adds the node list",
    "dlrm": "Alibaba DLRM inference instances (GPU v2025)",
    "philly": "Philly-style per-job GPU CSV (timestamp, duration, num_gpus)",
    "parquet": "cplat's own Parquet trace (what `cplat trace convert` writes)",
}


def parse_trace_spec(spec: str) -> tuple[str, Path]:
    """Split ``"KIND:PATH"`` into the kind and the path.

    Raises
    ------
    InputError
        When the colon, the kind or the path is missing, or the kind is unknown.
    """
    kind, sep, path = spec.partition(":")
    kind = kind.strip().lower()
    known = ", ".join(TRACE_KINDS)
    if not sep:
        raise InputError(
            f"expected KIND:PATH (kinds: {known}), got {spec!r}", field="KIND:PATH", kind="argument"
        )
    if kind not in TRACE_KINDS:
        raise InputError(
            f"unknown trace kind {kind!r} (kinds: {known})", field="KIND:PATH", kind="argument"
        )
    if not path.strip():
        raise InputError(f"missing path after {kind!r}:", field="KIND:PATH", kind="argument")
    return kind, Path(path)


def load_trace(
    kind: str,
    path: Path,
    *,
    nodes: Path | None = None,
    strict: bool = False,
    gpus_per_machine: int | None = None,
) -> Trace:
    """Read a trace of ``kind`` (see :data:`TRACE_KINDS`).

    Parameters
    ----------
    kind, path
        The reader and the file.
    nodes
        The node list of an ``openb`` trace.
    strict
        Raise at the first bad row instead of skipping it.
    gpus_per_machine
        ``philly`` only: GPUs of the largest machine; wider jobs become gangs of machine-sized
        tasks (default :data:`cplat.traces.philly.DEFAULT_GPUS_PER_MACHINE`).

    Raises
    ------
    InputError
        For an unknown kind, ``nodes`` with a kind other than ``openb``, and any reader error.
    """
    if nodes is not None and kind != "openb":
        raise InputError(f"--nodes applies to openb traces only, not {kind}", field="--nodes")
    if kind == "swf":
        from cplat.traces.swf import read_swf

        return read_swf(path, strict=strict)
    if kind == "openb":
        from cplat.traces.openb_jobs import read_openb_jobs

        return read_openb_jobs(path, nodes, strict=strict)
    if kind == "dlrm":
        from cplat.traces.dlrm import read_dlrm

        return read_dlrm(path, strict=strict)
    if kind == "philly":
        from cplat.traces.philly import DEFAULT_GPUS_PER_MACHINE, read_gpu_jobs_csv

        return read_gpu_jobs_csv(
            path, strict=strict, gpus_per_machine=gpus_per_machine or DEFAULT_GPUS_PER_MACHINE
        )
    if kind == "parquet":
        from cplat.traces.trace import read_trace_parquet

        return read_trace_parquet(path)
    raise InputError(f"unknown trace kind {kind!r} (kinds: {', '.join(TRACE_KINDS)})")
