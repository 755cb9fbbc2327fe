"""Cluster facade: builds native cluster states and engines from column tables."""

from __future__ import annotations

from typing import Any

import numpy as np

from cplat import _core
from cplat.fragmentation import TargetWorkload
from cplat.model import NodeTable
from cplat.profile import Profile

_EMPTY_WORKLOAD = TargetWorkload(
    cpu_milli=np.zeros(0, dtype=np.int64),
    num_gpu=np.zeros(0, dtype=np.int32),
    gpu_milli=np.zeros(0, dtype=np.int32),
    models=np.zeros(0, dtype=np.uint64),
    weight=np.zeros(0, dtype=np.float64),
)


def new_state(nodes: NodeTable) -> _core.ClusterState:
    """Return an empty (nothing allocated) native cluster state for ``nodes``."""
    return _core.ClusterState(
        nodes.cpu_milli, nodes.memory_mib, nodes.num_gpu, nodes.gpu_model, nodes.rack, nodes.spine
    )


def new_engine(
    state: _core.ClusterState,
    profile: Profile,
    seed: int,
    workload: TargetWorkload | None = None,
) -> _core.Engine:
    """Return a placement engine over ``state``.

    ``workload`` enables fragmentation tracking (and is required by FGD profiles).
    """
    w = workload if workload is not None else _EMPTY_WORKLOAD
    if profile.needs_workload and len(w) == 0:
        raise ValueError(f"policy {profile.name!r} needs a non-empty target workload")
    scorers: list[tuple[Any, ...]] = []
    for scorer, weight in profile.scorers:
        if isinstance(scorer, str):
            scorers.append((scorer, weight))
        else:
            # The engine keeps this list, and so the scorer owning the native code, alive.
            scorers.append(("python", weight, scorer.address, scorer.normalize, scorer))
    return _core.Engine(
        state,
        scorers,
        profile.gpu_pick,
        w.cpu_milli,
        w.num_gpu,
        w.gpu_milli,
        w.models,
        w.weight,
        seed & 0xFFFFFFFFFFFFFFFF,
        profile.tie_break,
    )
