"""Seeded generator of openb-like clusters and task lists (cplat's embedded default data).

The shapes imitate openb, Alibaba's GPU-sharing cluster trace: its node types at their shares,
and tasks that are CPU-only, a fraction of one GPU, one whole GPU, or several whole GPUs, in
openb's proportions, with CPU drawn per kind from openb's quantiles and memory proportional to
CPU. The numbers are constants measured once from the public trace; nothing is read at run time.
"""

from __future__ import annotations

import numpy as np

from cplat.model import GpuModels, NodeTable, TaskTable

_MODELS = GpuModels(("A10", "G2", "G3", "P100", "T4", "V100M16", "V100M32"))

# (model, GPUs, milli-CPU, MiB, share of nodes): the node types of openb's GPU node list
# (1,213 nodes) with at least 1 % of the nodes, at their measured shares. The CPU per GPU
# differs widely between types (13 cores per GPU on G2, 52 on T4, 8 on P100), which is what
# lets a placement policy match a task's CPU:GPU ratio to a node's.
_NODE_TYPES = (
    ("G2", 8, 96_000, 393_216, 0.453),
    ("T4", 2, 104_000, 524_288, 0.319),
    ("P100", 2, 16_000, 122_880, 0.088),
    ("G3", 8, 128_000, 786_432, 0.032),
    ("V100M16", 4, 32_000, 131_072, 0.023),
    ("P100", 2, 64_000, 262_144, 0.018),
    ("V100M32", 8, 96_000, 786_432, 0.017),
    ("V100M16", 1, 8_000, 32_768, 0.016),
    ("T4", 4, 96_000, 393_216, 0.014),
)

# Popular GPU shares of fractional tasks and their weights.
_SHARES = np.array([810, 470, 320, 650, 230, 160, 550, 370, 590, 220], dtype=np.int32)
_SHARE_W = np.array([0.30, 0.20, 0.09, 0.08, 0.07, 0.06, 0.06, 0.05, 0.05, 0.04])
# Milli-CPU of a task by kind, as (choices, weights) following the quantiles of openb's
# default pod list: GPU-sharing tasks are small (median 4 cores), whole-GPU tasks ask for about
# one GPU's share of a G2 node (median 11.4 cores), CPU-only tasks are large (12.5-32 cores).
# Drawing one CPU distribution for every kind (as this generator once did) gives GPU-sharing
# tasks ~10 cores each: nodes then run out of CPU before their GPUs can be shared, every idle
# GPU is stranded behind exhausted CPU, and no GPU placement policy can do better than another.
_CPU_BY_KIND = (
    # CPU-only
    (np.array([8_000, 12_000, 16_000, 32_000]), np.array([0.20, 0.40, 0.10, 0.30])),
    # a fraction of one GPU
    (
        np.array([2_000, 3_000, 4_000, 6_000, 8_000, 12_000]),
        np.array([0.08, 0.30, 0.22, 0.10, 0.20, 0.10]),
    ),
    # one whole GPU
    (
        np.array([3_000, 8_000, 10_000, 11_000, 12_000, 16_000]),
        np.array([0.12, 0.08, 0.15, 0.20, 0.30, 0.15]),
    ),
)


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
    cpu = 8_000 * num_gpu.astype(np.int64)  # multi-GPU tasks: 8 cores per GPU
    for k, (choices, weights) in enumerate(_CPU_BY_KIND):
        drawn = rng.choice(choices, size=count, p=weights / weights.sum())
        cpu = np.where(kind == k, drawn, cpu)
    cpu = cpu.astype(np.int64)
    # 2, 4 or 8 GiB per core: mean 3.9 GiB, near openb's median of 3.8-4.2 GiB per core.
    per_core = rng.choice(np.array([2048, 4096, 8192]), size=count, p=[0.3, 0.6, 0.1])
    memory = (cpu // 1000 * per_core).astype(np.int64)
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
