"""Edges of the native API: bad node lists, rejection reasons, batch outputs."""

from __future__ import annotations

import numpy as np
import pytest

from cplat import _core
from cplat.cluster import new_engine, new_state
from cplat.pack.synthetic import synthetic_cluster
from cplat.profile import POLICIES


def state_of(cpu: list[int], gpus: list[int], models: list[int]) -> _core.ClusterState:
    n = len(cpu)
    z = np.zeros(n, dtype=np.int32)
    return _core.ClusterState(
        np.asarray(cpu), np.full(n, 8192), np.asarray(gpus, dtype=np.int32),
        np.asarray(models, dtype=np.int32), z, z,
    )  # fmt: skip


@pytest.mark.parametrize("model", [64, 70, -2])
def test_gpu_model_ids_outside_the_mask_are_rejected(model: int) -> None:
    with pytest.raises(ValueError, match="GPU model id"):
        state_of([8000], [2], [model])


def test_rejection_reasons_are_per_call() -> None:
    state = state_of([8000, 8000], [0, 0], [-1, -1])
    engine = new_engine(state, POLICIES["bestfit"], 0)
    status, node, _ = engine.place(9000, 10, 0, 0, 0)
    assert (status.code, status.plugin, node) == ("insufficient_cpu", "NodeResourcesFit", -1)
    assert engine.last_rejections()[_core.code_names().index("insufficient_cpu")] == 2
    status, node, _ = engine.place(1000, 10, 0, 0, 0)
    assert status.ok and node in (0, 1)
    assert sum(engine.last_rejections()) == 0


def test_batch_reports_dominant_reason_and_gpus() -> None:
    nodes = synthetic_cluster(4, seed=1, gpus_per_node=2)
    state = new_state(nodes)
    engine = new_engine(state, POLICIES["bestfit"], 0)
    cpu = np.array([1000, 1000, 1000, 10**9], dtype=np.int64)
    out = engine.place_batch(
        cpu, np.full(4, 10), np.array([1, 2, 1, 1], dtype=np.int32),
        np.array([500, 1000, 1000, 1000], dtype=np.int32), np.zeros(4, dtype=np.uint64),
    )  # fmt: skip
    names = _core.code_names()
    assert [names[c] for c in out["code"]] == ["ok", "ok", "ok", "insufficient_cpu"]
    offsets, gpus = out["gpu_offsets"], out["gpus"]
    assert np.diff(offsets).tolist() == [1, 2, 1, 0]
    assert all(0 <= g < 2 for g in gpus)
    assert state.check_invariants()
