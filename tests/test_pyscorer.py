"""Python scorers compiled by numba and called by the native engine (cplat.scorers)."""

from __future__ import annotations

import gc
import importlib.util
import sys
import weakref
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from cplat import _core, scorers
from cplat.cluster import new_engine, new_state
from cplat.errors import InputError
from cplat.model import NodeTable, TaskTable
from cplat.pack.synthetic import synthetic_cluster, synthetic_tasks
from cplat.profile import POLICIES, Profile


def test_missing_numba_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # Runs with or without numba: a None entry in sys.modules makes the import fail.
    monkeypatch.setitem(sys.modules, "numba", None)
    scorers._parts.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"cplat\[research\]"):
            scorers.scorer(lambda node, state, request: 0)
    finally:
        scorers._parts.cache_clear()


def test_python_scorer_needs_the_compiled_object() -> None:
    with pytest.raises(InputError, match="compiled object"):
        Profile("p", "p", (("python", 1),), "best")


def test_engine_binding_checks_python_entries() -> None:
    state = new_state(synthetic_cluster(4))
    empty: list[int] = []

    def engine(scorers: list[Any]) -> Any:
        return _core.Engine(state, scorers, "best", empty, empty, empty, empty, empty, 0)

    with pytest.raises(ValueError, match="address, normalize, owner"):
        engine([("python", 1)])
    with pytest.raises(ValueError, match="needs a function address"):
        engine([("python", 1, 0, False, None)])
    with pytest.raises(ValueError, match="bestfit is a \\(name, weight\\) pair"):
        engine([("bestfit", 1, 1234, False, None)])


# Also run under tools/sanitize.sh: numba's JIT works with the preloaded ASan/UBSan runtimes,
# and the engine's side of the callback is then checked by the sanitizers.
_NO_JIT = (
    "numba is not installed (pip install 'cplat[research]')"
    if importlib.util.find_spec("numba") is None
    else ""
)
needs_jit = pytest.mark.skipif(bool(_NO_JIT), reason=_NO_JIT)


@pytest.fixture(scope="module")
def py_scorers() -> ModuleType:
    from cplat.policy import py_scorers  # compiles its scorers: needs numba

    return py_scorers


def _openb_like(nodes: int = 160, seed: int = 3) -> tuple[NodeTable, TaskTable]:
    cluster = synthetic_cluster(nodes, seed=seed)
    # Over-subscribed (load 1.2), so the tail of the list fails and exercises rejections.
    return cluster, synthetic_tasks(cluster, seed=seed, load=1.2)


def _place(nodes: NodeTable, tasks: TaskTable, profile: Profile, seed: int) -> dict[str, Any]:
    engine = new_engine(new_state(nodes), profile, seed)
    return engine.place_batch(
        tasks.cpu_milli, tasks.memory_mib, tasks.num_gpu, tasks.gpu_milli, tasks.models
    )


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    for key in ("node", "code", "gpu_offsets", "gpus"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@needs_jit
@pytest.mark.parametrize("tie_break", ["rank", "random"])
def test_bestfit_places_like_native_bestfit(tie_break: str, py_scorers: ModuleType) -> None:
    nodes, tasks = _openb_like()
    native = Profile("bestfit", "bestfit", (("bestfit", 1000),), "best", tie_break)
    for seed in (0, 1):
        a = _place(nodes, tasks, native, seed)
        b = _place(nodes, tasks, py_scorers.bestfit_profile(tie_break), seed)
        _same(a, b)
        placed = a["node"] >= 0
        assert placed.sum() > len(tasks) // 2 and not placed.all()  # both outcomes seen


@needs_jit
def test_bestfit_in_a_weighted_profile_is_normalised_like_native(py_scorers: ModuleType) -> None:
    # With clustering beside it, min-max normalising bestfit's scores changes the decisions,
    # so the python scorer must be normalised exactly as the native one is.
    nodes, tasks = _openb_like(nodes=80, seed=5)
    native = _place(nodes, tasks, Profile("n", "n", (("bestfit", 1), ("clustering", 1)), "best"), 7)
    python = Profile("p", "p", ((py_scorers.bestfit, 1), ("clustering", 1)), "best")
    _same(native, _place(nodes, tasks, python, 7))
    raw = scorers.scorer(py_scorers._bestfit)  # not normalised
    unnormalised = _place(nodes, tasks, Profile("r", "r", ((raw, 1), ("clustering", 1)), "best"), 7)
    assert (unnormalised["node"] != native["node"]).any()


@needs_jit
def test_engine_score_uses_the_python_scorer(py_scorers: ModuleType) -> None:
    nodes, _ = _openb_like(nodes=50)
    engine = new_engine(new_state(nodes), py_scorers.bestfit_profile(), 0)
    for shape in [(4000, 8192, 1, 500), (16000, 1024, 2, 1000), (8000, 4096, 0, 0)]:
        want = engine.score("bestfit", *shape, 0)
        np.testing.assert_array_equal(engine.score("python", *shape, 0), want)


@needs_jit
def test_state_and_request_reach_the_scorer() -> None:
    # Prefers the node with the most free memory left after the task, read through the state
    # arrays the engine passes, and reports the request through its score.
    @scorers.scorer
    def most_memory(node: int, state: scorers.NodeState, request: scorers.Request) -> int:
        return state.memory_free[node] - request.memory_mib

    nodes, _ = _openb_like(nodes=40)
    state = new_state(nodes)
    engine = new_engine(state, scorers.profile(most_memory), 0)
    ok, node, _gpus = engine.place(1000, 2048, 0, 0, 0)
    assert ok.ok
    assert nodes.memory_mib[node] == nodes.memory_mib.max()  # all empty: a largest node
    got = engine.score("python", 1000, 4096, 0, 0, 0)
    np.testing.assert_array_equal(got, state.memory_free - 4096)


@needs_jit
def test_wrong_signatures_are_refused() -> None:
    with pytest.raises(TypeError, match=r"exactly \(node, state, request\)"):
        scorers.scorer(lambda node, state: 0)
    with pytest.raises(TypeError, match=r"exactly \(node, state, request\)"):
        scorers.scorer(lambda node, state, request, extra: 0)

    def fractional(node: int, state: scorers.NodeState, request: scorers.Request) -> float:
        return state.cpu_free[node] / 3.0

    with pytest.raises(TypeError, match="must return an integer"):
        scorers.scorer(fractional)  # type: ignore[arg-type]

    def writes(node: int, state: scorers.NodeState, request: scorers.Request) -> int:
        state.cpu_free[node] = 0
        return 0

    with pytest.raises(TypeError, match="does not compile"):
        scorers.scorer(writes)

    def unknown_field(node: int, state: scorers.NodeState, request: scorers.Request) -> int:
        return state.no_such_column[node]  # type: ignore[attr-defined, no-any-return]

    with pytest.raises(TypeError, match="does not compile"):
        scorers.scorer(unknown_field)


@needs_jit
def test_engine_keeps_the_scorer_alive(py_scorers: ModuleType) -> None:
    nodes, tasks = _openb_like(nodes=60, seed=11)

    def build() -> tuple[Any, weakref.ref[scorers.Scorer]]:
        # A fresh scorer only this function knows; the engine must keep its code alive.
        fresh = scorers.scorer(normalize=True)(py_scorers._bestfit)
        engine = new_engine(new_state(nodes), scorers.profile(fresh), 4)
        return engine, weakref.ref(fresh)

    engine, ref = build()
    gc.collect()
    assert ref() is not None  # held through the engine, not by this test
    out = engine.place_batch(
        tasks.cpu_milli, tasks.memory_mib, tasks.num_gpu, tasks.gpu_milli, tasks.models
    )
    _same(out, _place(nodes, tasks, POLICIES["bestfit"], 4))
    del engine, out
    gc.collect()
    assert ref() is None  # and released with it
