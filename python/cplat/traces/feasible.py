"""Screen a trace against the cluster it will run on: jobs that can never start are rejected.

A job no empty cluster could ever hold (a task larger than every node, more tasks than the whole
cluster holds, a GPU model the cluster lacks) would wait forever; under a first-come-first-served
queue it also blocks every job behind it, and a replay's waits and slowdowns would be computed
over the few jobs that happened to finish. :func:`screen_jobs` finds such jobs before the replay,
from the job shapes and the node capacities alone (the scheduler's rules for one task on one
node, several tasks of a job allowed on one node), and treats them as bad rows of the trace:
counted by reason in the read report, or an :class:`~cplat.errors.InputError` naming the file,
line and column in strict mode.

Dimensions the cluster does not describe are not checked: when every node has 0 CPU (or 0
memory), the source gave none (the Philly machine list has no CPUs, the spot-GPU node list no
memory), and jobs' requests in that dimension are set to 0 with a warning instead of making every
job infeasible.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from cplat.errors import InputError
from cplat.model import MILLI_GPU, NodeTable
from cplat.traces.trace import MAX_EXAMPLES, ReadReport, Trace

__all__ = ["INFEASIBLE_REASONS", "screen_jobs"]

#: Skip reasons :func:`screen_jobs` counts, with the job column each is about.
INFEASIBLE_REASONS: dict[str, str] = {
    "infeasible: no GPUs in the cluster": "num_gpu",
    "infeasible: GPU model not in the cluster": "gpu_models",
    "infeasible: task larger than any node (CPU)": "cpu_milli",
    "infeasible: task larger than any node (memory)": "memory_mib",
    "infeasible: task larger than any node (GPUs)": "num_gpu",
    "infeasible: no node holds one task": "num_gpu",
    "infeasible: wider than the cluster": "num_tasks",
}
# A per-node task count standing for "no limit" (a task that asks for nothing); large enough
# for any trace, small enough that a sum over a million nodes stays inside int64.
_UNLIMITED = np.int64(1 << 40)


def _i64(table: pa.Table, name: str) -> npt.NDArray[np.int64]:
    return np.asarray(table.column(name).to_numpy(), dtype=np.int64)


def _cores(milli: int) -> str:
    return f"{milli / 1000:g}"


def _task(cpu: int, mem: int, ngpu: int, milli: int) -> str:
    """Describe one task's request: ``8 GPUs``, ``1 CPU, 512 MiB``, ``0.5 GPU``."""
    parts = []
    if cpu:
        parts.append(f"{_cores(cpu)} CPU" + ("" if cpu == 1000 else "s"))
    if mem:
        parts.append(f"{mem:,} MiB")
    if ngpu == 1 and milli < MILLI_GPU:
        parts.append(f"{milli / MILLI_GPU:g} GPU")
    elif ngpu:
        parts.append(f"{ngpu} GPU" + ("" if ngpu == 1 else "s"))
    return ", ".join(parts) or "nothing"


def _unchecked_dimensions(jobs: pa.Table, nodes: NodeTable) -> tuple[pa.Table, list[str]]:
    """Zero the CPU or memory requests of a cluster that gives no CPU or memory sizes."""
    notes: list[str] = []
    for column, capacity, what in (
        ("cpu_milli", nodes.cpu_milli, "CPU"),
        ("memory_mib", nodes.memory_mib, "memory"),
    ):
        asked = _i64(jobs, column)
        if len(capacity) and int(capacity.max()) == 0 and bool((asked > 0).any()):
            count = int((asked > 0).sum())
            index = jobs.schema.get_field_index(column)
            zeros = pa.array(np.zeros(jobs.num_rows, dtype=np.int64), type=pa.int64())
            jobs = jobs.set_column(index, jobs.schema.field(column), zeros)
            notes.append(
                f"the cluster gives no {what} sizes (every node has 0): the {what} requests of "
                f"{count:,} jobs are not checked"
            )
    return jobs, notes


def _model_masks(
    specs: list[str], nodes: NodeTable
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.bool_], list[str]]:
    """Return per job its allowed models' mask, whether it names missing ones, a known spec.

    The mask holds only models the cluster has; the spec is rewritten to those names.
    """
    names = nodes.models.names
    cache: dict[str, tuple[int, bool, str]] = {}
    masks = np.zeros(len(specs), dtype=np.uint64)
    unknown = np.zeros(len(specs), dtype=bool)
    rewritten: list[str] = []
    for i, spec in enumerate(specs):
        if spec not in cache:
            wanted = [p.strip() for p in spec.split("|") if p.strip()]
            known = [p for p in wanted if p in names]
            mask = 0
            for p in known:
                mask |= 1 << names.index(p)
            cache[spec] = (mask, len(known) < len(wanted), "|".join(known))
        mask, missing, spec_known = cache[spec]
        masks[i] = mask
        unknown[i] = missing
        rewritten.append(spec_known if missing and mask else spec)
    return masks, unknown, rewritten


def _tasks_per_node(
    nodes: NodeTable, cpu: int, mem: int, ngpu: int, milli: int, mask: int
) -> npt.NDArray[np.int64]:
    """How many tasks of one shape each empty node holds (0 where one does not fit)."""
    n = len(nodes)
    cap = np.full(n, _UNLIMITED, dtype=np.int64)
    if cpu > 0:
        cap = np.minimum(cap, nodes.cpu_milli // cpu)
    if mem > 0:
        cap = np.minimum(cap, nodes.memory_mib // mem)
    if ngpu > 0:
        devices = nodes.num_gpu.astype(np.int64)
        if ngpu == 1 and milli < MILLI_GPU:
            cap = np.minimum(cap, devices * (MILLI_GPU // max(milli, 1)))
        else:
            cap = np.minimum(cap, devices // ngpu)
        if mask:
            model = nodes.gpu_model.astype(np.int64)
            bit = np.maximum(model, 0).astype(np.uint64)
            ok = (model >= 0) & (((np.uint64(mask) >> bit) & np.uint64(1)) == 1)
            cap = np.where(ok, cap, 0)
    return cap


def _why(
    nodes: NodeTable,
    cpu: int,
    mem: int,
    ngpu: int,
    milli: int,
    mask: int,
    spec: str,
    missing_model: bool,
) -> tuple[str, str] | None:
    """Return ``(reason, message)`` when no empty node holds one task of this shape."""
    if ngpu > 0 and int(nodes.num_gpu.max(initial=0)) == 0:
        return "infeasible: no GPUs in the cluster", "asks for GPUs; the cluster has none"
    if missing_model and mask == 0:
        return (
            "infeasible: GPU model not in the cluster",
            f"asks for GPU model {spec!r}; the cluster has {', '.join(nodes.models.names)}",
        )
    per_node = _tasks_per_node(nodes, cpu, mem, ngpu, milli, mask)
    if not (per_node > 0).any():
        max_cpu = int(nodes.cpu_milli.max(initial=0))
        max_mem = int(nodes.memory_mib.max(initial=0))
        max_gpu = int(nodes.num_gpu.max(initial=0))
        if cpu > max_cpu:
            return (
                "infeasible: task larger than any node (CPU)",
                f"a task asks for {_cores(cpu)} CPUs; the largest node has {_cores(max_cpu)}",
            )
        if mem > max_mem:
            return (
                "infeasible: task larger than any node (memory)",
                f"a task asks for {mem:,} MiB of memory; the largest node has {max_mem:,} MiB",
            )
        if ngpu > max_gpu:
            return (
                "infeasible: task larger than any node (GPUs)",
                f"a task asks for {ngpu} GPUs; the largest node has {max_gpu}",
            )
        return (
            "infeasible: no node holds one task",
            f"no node has a task's {_cores(cpu)} CPUs, {mem:,} MiB and {ngpu} GPUs together",
        )
    return None


def screen_jobs(trace: Trace, nodes: NodeTable, *, strict: bool = False) -> Trace:
    """Reject the jobs of ``trace`` that ``nodes`` could never run (see the module docstring).

    Parameters
    ----------
    trace
        A trace from one of the readers.
    nodes
        The cluster the trace will be replayed on.
    strict
        Raise at the first infeasible job (in table order) instead of leaving it out.

    Returns
    -------
    Trace
        The trace without its infeasible jobs; ``report.skipped`` counts them by reason
        (:data:`INFEASIBLE_REASONS`), ``report.examples`` gains their messages,
        ``meta["infeasible_jobs"]`` is their number, and ``report.warnings`` says which
        requests went unchecked.

    Raises
    ------
    InputError
        In strict mode, for the first infeasible job: the file, its line (when the reader
        recorded lines) and the source column, e.g. ``trace.csv:7: column 'num_gpus': job 5
        asks for 256 tasks; the whole cluster holds at most 128 of them``.
    """
    jobs, notes = _unchecked_dimensions(trace.jobs, nodes)
    n = jobs.num_rows
    specs = [str(s) for s in jobs.column("gpu_models").to_pylist()]
    masks, missing, rewritten = _model_masks(specs, nodes)
    tasks = _i64(jobs, "num_tasks")
    cpu = _i64(jobs, "cpu_milli")
    mem = _i64(jobs, "memory_mib")
    ngpu = _i64(jobs, "num_gpu")
    milli = _i64(jobs, "gpu_milli")
    # Few distinct shapes even in large traces (SWF: one): decide each once, and each width of
    # a shape with one more pass over its per-node counts.
    keys = np.stack([cpu, mem, ngpu, milli, masks.view(np.int64), missing.astype(np.int64)], 1)
    shapes, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    bad = np.zeros(n, dtype=bool)
    reasons: list[tuple[str, str] | None] = [None] * n
    for s, shape in enumerate(shapes):
        members = np.flatnonzero(inverse == s)
        c, m, g, ml = (int(v) for v in shape[:4])
        j0 = int(first[s])
        mask = int(masks[j0])
        one = _why(nodes, c, m, g, ml, mask, specs[j0], bool(missing[j0]))
        if one is not None:  # not even one task fits: every width fails the same way
            bad[members] = True
            for j in members.tolist():
                reasons[j] = one
            continue
        per_node = _tasks_per_node(nodes, c, m, g, ml, mask)
        widths = tasks[members]
        for width in np.unique(widths)[::-1].tolist():  # widest first: stop at one that fits
            total = int(np.minimum(per_node, width).sum())
            if width <= total:
                break
            why = (
                "infeasible: wider than the cluster",
                f"asks for {width:,} tasks of {_task(c, m, g, ml)}; the whole cluster holds at "
                f"most {total:,} such tasks",
            )
            for j in members[widths == width].tolist():
                bad[j] = True
                reasons[j] = why
    if masks.size and any(missing & (masks != 0)):
        index = jobs.schema.get_field_index("gpu_models")
        jobs = jobs.set_column(
            index, jobs.schema.field("gpu_models"), pa.array(rewritten, type=pa.string())
        )
        notes.append(
            f"{int((missing & (masks != 0)).sum()):,} jobs name GPU models the cluster lacks "
            "besides ones it has: they run on the ones it has"
        )
    report = trace.report
    source = report.source
    lines = trace.lines
    job_ids = _i64(jobs, "job_id")
    bad_rows = np.flatnonzero(bad)
    if strict and bad_rows.size:
        j = int(bad_rows[0])
        reason, message = reasons[j] or ("", "")
        canonical = INFEASIBLE_REASONS[reason]
        raise InputError(
            f"job {int(job_ids[j])} {message}",
            source=source,
            row=int(lines[j]) if lines is not None else None,
            field=trace.fields.get(canonical, canonical),
        )
    if not bad_rows.size and not notes:
        return trace
    skipped = Counter(report.skipped)
    examples = list(report.examples)
    # Its own few examples even when the reader's filled the list: these are the ones to read.
    room = len(examples) + MAX_EXAMPLES
    for j in bad_rows.tolist():
        reason, message = reasons[j] or ("", "")
        skipped[reason] += 1
        if len(examples) < room:
            canonical = INFEASIBLE_REASONS[reason]
            examples.append(
                str(
                    InputError(
                        f"job {int(job_ids[j])} {message}",
                        source=source,
                        row=int(lines[j]) if lines is not None else None,
                        field=trace.fields.get(canonical, canonical),
                    )
                )
            )
    keep = ~bad
    new_report = ReadReport(
        source=source,
        rows_read=report.rows_read,
        rows_kept=report.rows_kept - int(bad_rows.size),
        skipped=dict(skipped),
        examples=examples,
        warnings=[*report.warnings, *notes],
    )
    meta = dict(trace.meta)
    meta["infeasible_jobs"] = int(bad_rows.size)
    return replace(
        trace,
        jobs=jobs.filter(pa.array(keep)) if bad_rows.size else jobs,
        report=new_report,
        meta=meta,
        lines=lines[keep] if lines is not None else None,
    )
