"""Seeded generator of openb-like clusters and task lists (cplat's embedded default data).

The shapes imitate a production GPU-sharing cluster: mostly 8-GPU and 2-GPU nodes; tasks that
are CPU-only, a fraction of one GPU, one whole GPU, or several whole GPUs, with CPU and memory
correlated to the GPU share. Nothing here is read from outside the package.
"""

from __future__ import annotations

import numpy as np

from cplat.model import GpuModels, NodeTable, TaskTable

_MODELS = GpuModels(("A10", "G2", "G3", "P100", "T4", "V100M16", "V100M32"))

# (model, GPUs, milli-CPU, MiB, share of nodes)
_NODE_TYPES = (
    ("G2", 8, 96_000, 786_432, 0.45),
    ("G3", 8, 128_000, 786_432, 0.04),
    ("T4", 2, 64_000, 262_144, 0.32),
    ("T4", 4, 96_000, 393_216, 0.02),
    ("P100", 2, 64_000, 262_144, 0.11),
    ("V100M16", 8, 96_000, 524_288, 0.02),
    ("V100M32", 8, 96_000, 786_432, 0.02),
    ("V100M16", 4, 64_000, 262_144, 0.02),
)

# Popular GPU shares of fractional tasks and their weights.
_SHARES = np.array([810, 470, 320, 650, 230, 160, 550, 370, 590, 220], dtype=np.int32)
_SHARE_W = np.array([0.30, 0.20, 0.09, 0.08, 0.07, 0.06, 0.06, 0.05, 0.05, 0.04])
_CPU_CHOICES = np.array(
    [2_000, 4_000, 6_000, 8_000, 12_000, 16_000, 24_000, 32_000], dtype=np.int64
)
_CPU_W = np.array([0.08, 0.22, 0.12, 0.20, 0.18, 0.12, 0.05, 0.03])


def synthetic_cluster(
    num_nodes: int = 300, seed: int = 0, gpus_per_node: int | None = None
) -> NodeTable:
    """Return ``num_nodes`` nodes drawn from openb-like node types.

    With ``gpus_per_node`` every node has that many GPUs of one model, 96 cores and 768 GiB
    (a homogeneous cluster for benchmarks).
    """
    if num_nodes <= 0:
        raise ValueError("num_nodes must be positive")
    rng = np.random.Generator(np.random.PCG64(seed))
    if gpus_per_node is not None:
        models = np.full(num_nodes, _MODELS.index("G2"), dtype=np.int32)
        return NodeTable(
            name=tuple(f"syn-node-{i:05d}" for i in range(num_nodes)),
            cpu_milli=np.full(num_nodes, 96_000, dtype=np.int64),
            memory_mib=np.full(num_nodes, 786_432, dtype=np.int64),
            num_gpu=np.full(num_nodes, gpus_per_node, dtype=np.int32),
            gpu_model=models if gpus_per_node > 0 else np.full(num_nodes, -1, dtype=np.int32),
            models=_MODELS,
        )
    weights = np.array([t[4] for t in _NODE_TYPES])
    kinds = rng.choice(len(_NODE_TYPES), size=num_nodes, p=weights / weights.sum())
    return NodeTable(
        name=tuple(f"syn-node-{i:05d}" for i in range(num_nodes)),
        cpu_milli=np.array([_NODE_TYPES[k][2] for k in kinds], dtype=np.int64),
        memory_mib=np.array([_NODE_TYPES[k][3] for k in kinds], dtype=np.int64),
        num_gpu=np.array([_NODE_TYPES[k][1] for k in kinds], dtype=np.int32),
        gpu_model=np.array([_MODELS.index(_NODE_TYPES[k][0]) for k in kinds], dtype=np.int32),
        models=_MODELS,
    )


def synthetic_tasks(
    nodes: NodeTable,
    seed: int = 0,
    load: float = 0.95,
    cpu_only: float = 0.13,
    share: float = 0.38,
    multi_gpu: float = 0.01,
) -> TaskTable:
    """Return tasks whose total GPU request is about ``load`` x the cluster's GPU capacity.

    Parameters
    ----------
    nodes
        The cluster the tasks are for (sets the size of the list).
    seed
        Generator seed.
    load
        Total requested GPU as a fraction of capacity.
    cpu_only, share, multi_gpu
        Fractions of CPU-only, fractional-GPU and multi-GPU tasks; the rest take one whole GPU.
    """
    if not 0 < load:
        raise ValueError("load must be positive")
    rng = np.random.Generator(np.random.PCG64(seed + 1_000_003))
    capacity = nodes.total_gpu_milli
    mean_gpu = (
        share * float(_SHARES @ (_SHARE_W / _SHARE_W.sum()))
        + (1 - cpu_only - share - multi_gpu) * 1000
        + multi_gpu * 4500
    )
    count = max(1, int(round(load * capacity / max(mean_gpu, 1.0))))
    kind = rng.choice(
        4, size=count, p=[cpu_only, share, 1 - cpu_only - share - multi_gpu, multi_gpu]
    )
    num_gpu = np.where(kind == 0, 0, 1).astype(np.int32)
    gpu_milli = np.where(kind == 0, 0, 1000).astype(np.int32)
    shares = rng.choice(_SHARES, size=count, p=_SHARE_W / _SHARE_W.sum())
    gpu_milli = np.where(kind == 1, shares, gpu_milli).astype(np.int32)
    multi = rng.choice(np.array([2, 4, 8], dtype=np.int32), size=count, p=[0.3, 0.3, 0.4])
    num_gpu = np.where(kind == 3, multi, num_gpu).astype(np.int32)
    cpu = rng.choice(_CPU_CHOICES, size=count, p=_CPU_W / _CPU_W.sum())
    cpu = np.where(kind == 3, 8_000 * num_gpu, cpu).astype(np.int64)
    memory = (cpu // 1000 * rng.choice(np.array([2048, 4096, 8192]), size=count)).astype(np.int64)
    # A few tasks restrict GPU models, as production users sometimes do.
    spec_pick = rng.random(count) < 0.05
    restricted = spec_pick & (kind != 0)
    specs = tuple("V100M16|V100M32" if r else "" for r in restricted)
    return TaskTable(
        name=tuple(f"syn-pod-{i:06d}" for i in range(count)),
        cpu_milli=cpu,
        memory_mib=memory,
        num_gpu=num_gpu,
        gpu_milli=gpu_milli,
        gpu_spec=specs,
        models=np.array([nodes.models.mask(s) for s in specs], dtype=np.uint64),
    )
