"""GPU fragmentation against a target workload (Weng et al., USENIX ATC'23).

The target workload is the set of typical task shapes with their popularity. A node's idle
GPU capacity counts as fragmented for a shape unless the node can host it (allowed GPU model,
enough devices with the shape's share free, enough free CPU); when it can, only devices too
small for the shape count. The node's fragmentation is the popularity-weighted sum over the
shapes. The engine keeps this up to date incrementally; the functions here are the slow,
obvious reference used by the tests and by small analyses.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cplat.model import TaskTable

#: Share of all tasks the target workload must cover (most popular shapes first).
DEFAULT_COVERAGE = 0.95


@dataclass(frozen=True)
class TargetWorkload:
    """Typical task shapes and their popularity (weights sum to 1)."""

    cpu_milli: npt.NDArray[np.int64]
    num_gpu: npt.NDArray[np.int32]
    gpu_milli: npt.NDArray[np.int32]
    models: npt.NDArray[np.uint64]
    weight: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.weight)


def target_workload(tasks: TaskTable, coverage: float = DEFAULT_COVERAGE) -> TargetWorkload:
    """Derive the target workload from a task list.

    Shapes ``(cpu_milli, gpu_milli, num_gpu, gpu_spec)`` are ranked by how many tasks have them
    (ties: the larger shape first) and the most popular ones are kept until they cover
    ``coverage`` of all tasks; their weights are renormalised to sum to 1.
    """
    if not 0.0 < coverage <= 1.0:
        raise ValueError("coverage must be in (0, 1]")
    keys = list(
        zip(
            tasks.cpu_milli.tolist(),
            tasks.gpu_milli.tolist(),
            tasks.num_gpu.tolist(),
            tasks.gpu_spec,
            strict=True,
        )
    )
    counts = Counter(keys)
    mask_of = dict(zip(keys, tasks.models.tolist(), strict=True))
    ranked = sorted(counts.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
    total = float(len(keys))
    expected = coverage * total
    kept: list[tuple[tuple[int, int, int, str], float]] = []
    cumulative = 0.0
    for key, count in ranked:
        if cumulative >= expected:
            break
        cumulative += count
        kept.append((key, count / total))
    if len(kept) < len(ranked):
        share = cumulative / total
        kept = [(key, w / share) for key, w in kept]
    return TargetWorkload(
        cpu_milli=np.asarray([k[0] for k, _ in kept], dtype=np.int64),
        gpu_milli=np.asarray([k[1] for k, _ in kept], dtype=np.int32),
        num_gpu=np.asarray([k[2] for k, _ in kept], dtype=np.int32),
        models=np.asarray([mask_of[k] for k, _ in kept], dtype=np.uint64),
        weight=np.asarray([w for _, w in kept], dtype=np.float64),
    )


def node_fragmentation(
    workload: TargetWorkload, cpu_free: int, model: int, gpu_free: Sequence[int]
) -> float:
    """Fragmented milli-GPU of one node state (reference implementation).

    Parameters
    ----------
    workload
        Target workload.
    cpu_free
        Free milli-CPU on the node.
    model
        The node's GPU model id (-1 for none).
    gpu_free
        Free milli-GPU of each device.
    """
    idle = sum(gpu_free)
    if idle == 0:
        return 0.0
    frag = 0.0
    for cpu, ngpu, milli, mask, weight in zip(
        workload.cpu_milli.tolist(),
        workload.num_gpu.tolist(),
        workload.gpu_milli.tolist(),
        workload.models.tolist(),
        workload.weight.tolist(),
        strict=True,
    ):
        model_ok = mask == 0 or (model >= 0 and (mask >> model) & 1 == 1)
        if milli == 0 or not model_ok:
            frag += weight * idle
            continue
        fitting = [f for f in gpu_free if f >= milli]
        hostable = len(fitting) >= max(ngpu, 1) and cpu_free >= cpu
        frag += weight * (idle - sum(fitting) if hostable else idle)
    return frag
