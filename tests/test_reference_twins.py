"""The native engine against its Python reference twins (cplat.testing.reference).

Random small clusters: every filter code, raw score, fragmentation value and placement
decision of the engine must equal the slow, obvious Python version exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cplat import _core
from cplat.fragmentation import TargetWorkload, node_fragmentation
from cplat.testing import reference as ref
from cplat.testing.reference import NodeView, Request

CODES = _core.code_names()
ALL_SCORERS = ("random", *ref.SCORERS)
FLAG_VALUES = (1, 2, 4, 3)  # down, cordoned, draining, down+cordoned

SETTINGS = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- building native objects -----------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    cpu: int
    mem: int
    ngpu: int
    model: int


def make_state(nodes: list[Node]) -> _core.ClusterState:
    n = len(nodes)
    return _core.ClusterState(
        np.array([x.cpu for x in nodes], dtype=np.int64),
        np.array([x.mem for x in nodes], dtype=np.int64),
        np.array([x.ngpu for x in nodes], dtype=np.int32),
        np.array([x.model for x in nodes], dtype=np.int32),
        np.zeros(n, dtype=np.int32),
        np.zeros(n, dtype=np.int32),
    )


def make_workload(shapes: list[tuple[int, int, int, int, int]]) -> TargetWorkload:
    """Shapes are (cpu, num_gpu, gpu_milli, models, integer weight)."""
    total = float(sum(s[4] for s in shapes))
    return TargetWorkload(
        cpu_milli=np.array([s[0] for s in shapes], dtype=np.int64),
        num_gpu=np.array([s[1] for s in shapes], dtype=np.int32),
        gpu_milli=np.array([s[2] for s in shapes], dtype=np.int32),
        models=np.array([s[3] for s in shapes], dtype=np.uint64),
        weight=np.array([s[4] / total for s in shapes], dtype=np.float64),
    )


def make_engine(
    state: _core.ClusterState,
    scorers: list[tuple[str, int]],
    pick: str,
    workload: TargetWorkload,
    seed: int,
    tie_break: str = "rank",
) -> _core.Engine:
    w = workload
    return _core.Engine(
        state, scorers, pick, w.cpu_milli, w.num_gpu, w.gpu_milli, w.models, w.weight, seed,
        tie_break,
    )  # fmt: skip


def free_arrays(state: _core.ClusterState) -> tuple[list[int], list[int], list[int]]:
    return state.cpu_free.tolist(), state.memory_free.tolist(), state.gpu_free.tolist()


def assert_frag_matches(eng: _core.Engine, views: list[NodeView], w: TargetWorkload) -> None:
    node_frag = eng.node_frag.tolist()
    assert len(node_frag) == len(views)
    expected = [node_fragmentation(w, v.cpu_free, v.gpu_model, v.gpu_free) for v in views]
    for n, (got, want) in enumerate(zip(node_frag, expected, strict=True)):
        assert math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-6), (n, views[n], got, want)
    assert math.isclose(eng.frag_total, sum(expected), rel_tol=1e-6, abs_tol=1e-6)


# --- strategies ------------------------------------------------------------------------------

node_cpu = st.one_of(
    st.sampled_from([0, 4000, 8000, 32000, 64000, 96000, 128000]), st.integers(0, 200_000)
)
node_mem = st.one_of(st.sampled_from([0, 16384, 65536, 262144]), st.integers(0, 300_000))
nodes_st = st.lists(
    st.builds(
        Node,
        cpu=node_cpu,
        mem=node_mem,
        ngpu=st.integers(0, 8),
        # Mostly models 0..2; -1 (GPUs of no known model) now and then.
        model=st.sampled_from([0, 0, 1, 1, 2, 2, -1]),
    ),
    min_size=1,
    max_size=12,
)

req_cpu = st.one_of(st.sampled_from([0, 1000, 2000, 4000, 8000, 16000]), st.integers(0, 64000))
req_mem = st.one_of(st.sampled_from([0, 1024, 4096, 16384]), st.integers(0, 100_000))
share = st.one_of(st.sampled_from([1, 100, 250, 300, 500, 700, 999]), st.integers(1, 999))
# 0 = any; single models; pairs; a model no node has; the top bit of the uint64 mask.
masks = st.sampled_from([0, 0, 0, 0, 1, 2, 4, 3, 6, 5, 8, 1 << 63])


@st.composite
def requests(draw: st.DrawFn, odd: bool = False) -> Request:
    """CPU-only, share and whole-device requests; with ``odd`` also edge and invalid shapes."""
    kinds = ["cpu", "share", "share", "whole", "whole"]
    if odd:
        kinds += ["several_shares", "one_zero", "zero_share"]
    kind = draw(st.sampled_from(kinds))
    cpu, mem, models = draw(req_cpu), draw(req_mem), draw(masks)
    if kind == "cpu":
        return Request(cpu, mem, 0, 0, models)
    if kind == "share":
        return Request(cpu, mem, 1, draw(share), models)
    if kind == "whole":
        return Request(cpu, mem, draw(st.integers(1, 8)), 1000, models)
    if kind == "several_shares":  # invalid for place, but filter and score accept it
        return Request(cpu, mem, draw(st.integers(2, 4)), draw(share), models)
    if kind == "one_zero":  # num_gpu 1, no share: counts as a share, takes no GPU
        return Request(cpu, mem, 1, 0, models)
    return Request(cpu, mem, 0, draw(share), models)  # a share of no device: takes no GPU


workload_shape = st.one_of(
    st.tuples(req_cpu, st.just(0), st.just(0), masks, st.integers(1, 10)),
    st.tuples(req_cpu, st.just(1), share, masks, st.integers(1, 10)),
    st.tuples(req_cpu, st.integers(1, 8), st.just(1000), masks, st.integers(1, 10)),
)
workloads = st.lists(workload_shape, min_size=1, max_size=5).map(make_workload)

flags_st = st.lists(
    st.one_of(st.just(0), st.just(0), st.just(0), st.sampled_from(FLAG_VALUES)),
    min_size=12,
    max_size=12,
)
seeds = st.integers(0, 2**64 - 1)
PROBES = (Request(0, 0, 1, 300), Request(1000, 0, 1, 1000), Request(0, 0, 0, 0))

any_profile = st.tuples(
    st.lists(st.tuples(st.sampled_from(ALL_SCORERS), st.integers(1, 5)), min_size=1, max_size=3),
    st.sampled_from(["best", "worst", "random", "fgd"]),
    st.sampled_from(["rank", "random"]),
)
single_scorer = st.tuples(st.sampled_from(ref.SCORERS), st.sampled_from([1, 1000])).map(
    lambda s: [s]
)
scorer_mix = st.lists(
    st.tuples(st.sampled_from(ref.SCORERS), st.integers(1, 5)),
    min_size=2,
    max_size=3,
    unique_by=lambda s: s[0],
)
twin_profile = st.tuples(
    st.one_of(single_scorer, single_scorer, scorer_mix),
    st.sampled_from(["best", "worst", "fgd", "random"]),
)


# --- 1. filters, raw scores and fragmentation --------------------------------------------------


@SETTINGS
@given(
    nodes=nodes_st,
    workload=workloads,
    profile=any_profile,
    seed=seeds,
    prior=st.lists(requests(), max_size=15),
    flags=flags_st,
    queries=st.lists(requests(odd=True), min_size=1, max_size=6),
)
def test_filter_score_and_fragmentation_match_twin(
    nodes: list[Node],
    workload: TargetWorkload,
    profile: tuple[list[tuple[str, int]], str, str],
    seed: int,
    prior: list[Request],
    flags: list[int],
    queries: list[Request],
) -> None:
    state = make_state(nodes)
    scorers, pick, tie_break = profile
    eng = make_engine(state, scorers, pick, workload, seed, tie_break)
    for r in prior:
        eng.place(*r.args())
    for n in range(len(nodes)):
        state.set_flags(n, flags[n])
    assert_frag_matches(eng, ref.node_views(state), workload)

    for r in queries:
        views = ref.node_views(state)
        codes = [CODES[c] for c in eng.filter(*r.args()).tolist()]
        assert codes == [ref.filter_node(v, r) for v in views], r
        for scorer in ALL_SCORERS:
            got = eng.score(scorer, *r.args()).tolist()
            want = [
                ref.score_node(scorer, v, r, workload) if code == "ok" else -1
                for v, code in zip(views, codes, strict=True)
            ]
            assert got == want, (scorer, r, views)
        eng.place(*r.args())  # move on: later queries see a changed state
        assert_frag_matches(eng, ref.node_views(state), workload)


# --- 2. whole placement decisions ---------------------------------------------------------------


@SETTINGS
@given(
    nodes=nodes_st,
    workload=workloads,
    profile=twin_profile,
    seed=seeds,
    flags=flags_st,
    tasks=st.lists(requests(odd=True), min_size=1, max_size=20),
)
def test_place_matches_twin(
    nodes: list[Node],
    workload: TargetWorkload,
    profile: tuple[list[tuple[str, int]], str],
    seed: int,
    flags: list[int],
    tasks: list[Request],
) -> None:
    state = make_state(nodes)
    scorers, pick = profile
    eng = make_engine(state, scorers, pick, workload, seed)
    rank = eng.tie_rank.tolist()
    assert sorted(rank) == list(range(len(nodes)))
    for n in range(len(nodes)):
        state.set_flags(n, flags[n])
    views = ref.node_views(state)

    for r in tasks:
        twin_pick = pick if pick != "random" or not r.is_share else "best"
        code, node, gpus = ref.place(views, r, scorers, twin_pick, rank, workload)
        status, got_node, got_gpus = eng.place(*r.args())
        shape = "share" if r.is_share else "whole" if r.wants_gpu else "cpu"
        event(f"place {shape}: {status.code}")
        assert (status.code, got_node) == (code, node), (r, scorers, pick, views)
        if pick == "random" and r.is_share and r.wants_gpu and status.ok:
            assert len(got_gpus) == 1
            assert got_gpus[0] in ref.fitting_gpus(views[node], r)
        else:
            assert got_gpus == gpus, (r, scorers, pick, views[node])
        if status.ok:
            outcome, after = ref.allocate(views[node], r, got_gpus)
            assert outcome == "ok"
            views[node] = after
        # The twin's bookkeeping of the node states must equal the engine's.
        assert views == ref.node_views(state)
    assert state.check_invariants()


@settings(max_examples=40, deadline=None)
@given(
    nodes=nodes_st,
    workload=workloads,
    profile=twin_profile,
    seed=seeds,
    tasks=st.lists(requests(), min_size=1, max_size=12),
)
def test_random_tie_break_picks_a_best_total(
    nodes: list[Node],
    workload: TargetWorkload,
    profile: tuple[list[tuple[str, int]], str],
    seed: int,
    tasks: list[Request],
) -> None:
    state = make_state(nodes)
    scorers, pick = profile
    eng = make_engine(state, scorers, pick, workload, seed, tie_break="random")
    for r in tasks:
        views = ref.node_views(state)
        totals = ref.score_totals(views, r, scorers, workload)
        status, node, _ = eng.place(*r.args())
        assert status.ok == bool(totals)
        if totals:
            best = max(t for _, t in totals)
            assert node in [n for n, t in totals if t == best]


# --- 3. invariants under place / release ------------------------------------------------------


@SETTINGS
@given(
    nodes=nodes_st,
    workload=workloads,
    profile=any_profile,
    seed=seeds,
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("place"), requests(odd=True)),
            st.tuples(st.just("release"), st.integers(0, 1000)),
            st.tuples(st.just("bad_release"), st.integers(0, 1000)),
        ),
        min_size=1,
        max_size=30,
    ),
)
def test_place_release_keeps_invariants(
    nodes: list[Node],
    workload: TargetWorkload,
    profile: tuple[list[tuple[str, int]], str, str],
    seed: int,
    ops: list[tuple[str, Request | int]],
) -> None:
    state = make_state(nodes)
    scorers, pick, tie_break = profile
    eng = make_engine(state, scorers, pick, workload, seed, tie_break)
    initial_free = free_arrays(state)
    initial_views = ref.node_views(state)
    initial_frag = eng.frag_total
    rank = eng.tie_rank.tolist()
    deterministic = tie_break == "rank" and all(name != "random" for name, _ in scorers)
    live: list[tuple[int, Request, list[int]]] = []
    views = list(initial_views)

    def check() -> None:
        assert state.check_invariants()
        cpu, mem, gpu = free_arrays(state)
        assert min(cpu, default=0) >= 0 and min(mem, default=0) >= 0
        assert all(0 <= f <= 1000 for f in gpu)
        assert state.allocated_gpu_milli == sum(
            r.total_gpu_milli for _, r, _ in live if r.wants_gpu
        )
        assert views == ref.node_views(state)
        assert_frag_matches(eng, views, workload)
        for probe in PROBES:  # FGD scores depend on the node's fragmentation before and after
            want = [
                ref.score_node("fgd", v, probe, workload)
                if ref.filter_node(v, probe) == "ok"
                else -1
                for v in views
            ]
            assert eng.score("fgd", *probe.args()).tolist() == want

    for op, arg in ops:
        if op == "place":
            assert isinstance(arg, Request)
            expected = None
            if deterministic and (pick != "random" or not arg.is_share):
                expected = ref.place(views, arg, scorers, pick, rank, workload)
            status, node, gpus = eng.place(*arg.args())
            if expected is not None:  # cached scores must follow releases too
                assert (status.code, node, gpus) == expected, arg
            if status.ok:
                outcome, views[node] = ref.allocate(views[node], arg, gpus)
                assert outcome == "ok"
                live.append((node, arg, gpus))
        elif live:
            assert isinstance(arg, int)
            node, r, gpus = live[arg % len(live)]
            if op == "release":
                live.remove((node, r, gpus))
                assert eng.release(node, *r.args()[:4], gpus).ok
                outcome, views[node] = ref.release(views[node], r, gpus)
                assert outcome == "ok"
            else:  # a device the node does not have: rejected, nothing changes
                before = free_arrays(state)
                bad = [*gpus[:-1], views[node].gpu_count] if gpus else [0]
                status = eng.release(node, *r.args()[:4], bad)
                assert status.code == "invalid_argument"
                assert ref.release(views[node], r, bad)[0] == "invalid_argument"
                assert free_arrays(state) == before
        check()

    for node, r, gpus in reversed(live):
        assert eng.release(node, *r.args()[:4], gpus).ok
    live.clear()
    views = list(initial_views)
    check()
    assert free_arrays(state) == initial_free
    assert state.allocated_gpu_milli == 0
    assert all(state.kinds_present(n) == 0 for n in range(len(nodes)))
    assert math.isclose(eng.frag_total, initial_frag, rel_tol=1e-9, abs_tol=1e-6)


@pytest.mark.parametrize(
    ("scorers", "pick"),
    [([(name, 1000)], "best") for name in ref.SCORERS]
    + [([("fgd", 1)], "fgd"), ([("fgd", 2), ("packing", 1), ("bestfit", 1)], "worst")],
)
def test_score_cache_with_many_shapes(scorers: list[tuple[str, int]], pick: str) -> None:
    # The engine caches scores per (scorer, request shape, node) in 128 shape slots reused
    # least-recently-used first, and memoises fragmentation only for nodes of up to 8
    # devices. Draw 400 tasks from 250 shapes (so slots are recycled and cached entries are
    # hit) on nodes of 1..16 devices, releasing some: every decision must equal the twin's.
    rng = np.random.Generator(np.random.PCG64(11))
    nodes = [Node(96000 + 1000 * g, 1 << 20, g, g % 3) for g in (1, 2, 4, 8, 8, 12, 16)]
    w = make_workload([(4000, 1, 500, 0, 3), (8000, 1, 1000, 0, 2), (8000, 2, 1000, 1, 1)])
    shapes = []
    for i in range(250):
        ngpu = int(rng.integers(1, 3)) if i % 3 else 1
        milli = 1000 if ngpu > 1 or i % 3 == 1 else int(rng.integers(50, 1000))
        shapes.append(Request(500 * (i % 7) + i, 0, ngpu if i % 5 else 0, milli if i % 5 else 0))
    state = make_state(nodes)
    eng = make_engine(state, scorers, pick, w, 3)
    rank = eng.tie_rank.tolist()
    views = ref.node_views(state)
    live: list[tuple[int, Request, list[int]]] = []
    for step in range(400):
        r = shapes[int(rng.integers(0, len(shapes)))]
        expected = ref.place(views, r, scorers, pick, rank, w)
        status, node, gpus = eng.place(*r.args())
        assert (status.code, node, gpus) == expected, (step, r)
        if status.ok:
            views[node] = ref.allocate(views[node], r, gpus)[1]
            live.append((node, r, gpus))
        if live and (step % 3 == 2 or not status.ok):  # free some capacity again
            node, r, gpus = live.pop(int(rng.integers(0, len(live))))
            assert eng.release(node, *r.args()[:4], gpus).ok
            views[node] = ref.release(views[node], r, gpus)[1]
    assert views == ref.node_views(state)
    assert_frag_matches(eng, views, w)


def test_release_rejects_duplicate_devices() -> None:
    state = make_state([Node(8000, 1000, 2, 0)])
    eng = make_engine(state, [("bestfit", 1)], "best", make_workload([(0, 1, 1000, 0, 1)]), 0)
    status, node, gpus = eng.place(1000, 100, 2, 1000, 0)
    assert status.ok and (node, gpus) == (0, [0, 1])
    before = free_arrays(state)
    status = eng.release(0, 1000, 100, 2, 1000, [0, 0])
    assert (status.code, free_arrays(state)) == ("invalid_argument", before)
    assert state.check_invariants()


@pytest.mark.parametrize("weight", [0, -1])
def test_non_positive_weights_are_rejected(weight: int) -> None:
    # Scores are "higher is better"; the engine ranks a single scorer on its raw scores.
    state = make_state([Node(64000, 65536, 2, 0)])
    with pytest.raises(ValueError, match="weights must be positive"):
        make_engine(state, [("packing", weight)], "best", make_workload([(0, 1, 1000, 0, 1)]), 5)


def test_gpu_fields_must_describe_a_valid_shape() -> None:
    state = make_state([Node(64000, 65536, 2, 0)])
    eng = make_engine(state, [("bestfit", 1)], "best", make_workload([(0, 1, 1000, 0, 1)]), 0)
    for shape in [(0, 500), (1, 0), (2, 500), (1, 1001)]:
        status, node, gpus = eng.place(1000, 10, *shape, 0)
        assert (status.code, node, gpus) == ("invalid_argument", -1, [])


# --- 4. hand-written cases with known answers ---------------------------------------------------


def _view(gpu_free: tuple[int, ...], cpu: int = 64000, model: int = 0, flags: int = 0) -> NodeView:
    return NodeView(cpu, 1 << 20, gpu_free, model, flags)


def test_trunc_div_and_normalize() -> None:
    assert [ref.trunc_div(a, b) for a, b in [(7, 2), (-7, 2), (7, -2), (-7, -2)]] == [3, -3, -3, 3]
    assert ref.normalize_scores([]) == []
    assert ref.normalize_scores([5, 5, 5]) == [0, 0, 0]
    assert ref.normalize_scores([10, 20, 40]) == [0, 33, 100]
    assert ref.normalize_scores([-3, 0, 1]) == [0, 75, 100]


def test_filter_order() -> None:
    r = Request(10**9, 10**9, 1, 500, 1 << 2)
    assert ref.filter_node(_view((1000,), flags=2), r) == "node_unavailable"
    # A node without devices fails GPU requests before the model and CPU checks.
    assert ref.filter_node(_view((), model=-1), r) == "insufficient_gpu"
    assert ref.filter_node(_view((1000,), model=0), r) == "gpu_model_mismatch"
    assert ref.filter_node(_view((1000,), model=2), r) == "insufficient_cpu"
    assert ref.filter_node(_view((1000,), cpu=10**9, model=2), r) == "insufficient_memory"
    r2 = Request(0, 0, 2, 1000, 0)
    assert ref.filter_node(_view((1000, 999)), r2) == "insufficient_gpu"
    assert ref.filter_node(_view((1000, 1000)), r2) == "ok"


def test_known_scores() -> None:
    r = Request(32000, 0, 1, 500, 0)
    v = _view((1000, 1000), cpu=64000)
    # dot = (0.5 * 0.25 + 0.25 * 0.0625) / 2 = 0.0703125 -> int(92.96875)
    assert ref.score_dotprod(v, r) == 92
    # leftover = (32000 / 128000 + 1500 / 8000) / 2 = 0.21875
    assert ref.score_bestfit(v, r) == 78 and ref.score_worstfit(v, r) == 21
    # Larger than the normalising shape: negative, truncated toward zero.
    assert ref.score_bestfit(_view((1000,) * 8, cpu=200000), Request(0, 0, 0, 0)) == -28
    assert ref.score_packing(v, r) == 31  # idle 2-GPU node: 33 - 2
    assert ref.score_packing(_view((600, 1000)), r) == 94  # shares the used device: 100 - 60 / 10
    assert ref.score_packing(_view((300, 1000)), r) == 49  # needs a whole device: 50 - 1


def test_clustering_truncates_toward_zero_on_large_nodes() -> None:
    # 12 free devices exceed the 8-GPU normaliser: fill = 25 * (8000 - 12000) / 8000 = -12.5,
    # truncated to -12 (not floored to -13); plus 25 for a node without GPU tasks.
    state, eng, _ = _engine_for([Node(64000, 65536, 12, 0)], "clustering", "best")
    assert ref.score_clustering(ref.node_views(state)[0], Request(0, 0, 1, 500)) == 13
    assert eng.score("clustering", 0, 0, 1, 500, 0).tolist() == [13]


def _engine_for(
    nodes: list[Node], scorer: str, pick: str, workload: TargetWorkload | None = None
) -> tuple[_core.ClusterState, _core.Engine, TargetWorkload]:
    w = workload if workload is not None else make_workload([(0, 1, 1000, 0, 1)])
    state = make_state(nodes)
    return state, make_engine(state, [(scorer, 1000)], pick, w, 7), w


def test_packing_prefers_a_used_device() -> None:
    # Node 1 (model 1) gets a share first; a later share of any model goes to the same device.
    nodes = [Node(64000, 65536, 2, 0), Node(64000, 65536, 2, 1)]
    state, eng, _ = _engine_for(nodes, "packing", "best")
    status, node, gpus = eng.place(1000, 1024, 1, 500, 1 << 1)
    assert status.ok and (node, gpus) == (1, [0])
    assert eng.score("packing", 1000, 1024, 1, 300, 0).tolist() == [31, 95]
    status, node, gpus = eng.place(1000, 1024, 1, 300, 0)
    assert status.ok and (node, gpus) == (1, [0])
    assert state.gpu_free.tolist() == [1000, 1000, 200, 1000]


def test_clustering_prefers_a_node_running_the_same_kind() -> None:
    nodes = [Node(64000, 65536, 4, 0), Node(64000, 65536, 4, 1), Node(64000, 65536, 4, 2)]
    state, eng, _ = _engine_for(nodes, "clustering", "best")
    assert eng.place(1000, 1024, 1, 1000, 1 << 0)[1] == 0  # node 0 runs a 1-GPU task
    assert eng.place(1000, 1024, 1, 500, 1 << 1)[1] == 1  # node 1 runs a share
    # 1-GPU request: node 0 (only this kind) 75 + 25 * 5000 / 8000; node 1 (another kind)
    # 0 + 25 * 4500 / 8000; node 2 (idle) 25 + 25 * 4000 / 8000, all truncated.
    assert eng.score("clustering", 1000, 1024, 1, 1000, 0).tolist() == [90, 14, 37]
    assert eng.place(1000, 1024, 1, 1000, 0)[1] == 0
    # A share goes to node 1, which runs shares.
    assert eng.place(1000, 1024, 1, 200, 0)[1] == 1
    assert state.kind_count(0, 1) == 2 and state.kind_count(1, 0) == 2


def test_fgd_prefers_the_placement_that_fragments_less() -> None:
    # Target workload: only 700-milli shares. Devices [700, 1000] both host one (nothing
    # fragmented). A 300 share on device 0 leaves [400, 1000] (400 fragmented); on device 1
    # it leaves [700, 700] (nothing): FGD takes device 1 where best fit takes device 0.
    w = make_workload([(0, 1, 700, 0, 1)])
    v = _view((700, 1000))
    r = Request(0, 0, 1, 300)
    assert ref.score_fgd(v, r, w) == (50, 1)
    assert ref.pick_gpus(v, r, "best") == [0]
    assert ref.pick_gpus(v, r, "worst") == [1]
    assert ref.pick_gpus(v, r, "fgd", w) == [1]
    # The engine: node 0 gets to [700, 1000]; node 1 (one device) to [800], where a 300
    # share would leave 500 < 700 (500 fragmented, score 37). Node 0, device 1 wins.
    nodes = [Node(64000, 65536, 2, 0), Node(64000, 65536, 1, 1)]
    state, eng, _ = _engine_for(nodes, "fgd", "fgd", w)
    assert eng.place(0, 0, 1, 300, 1 << 0)[1:] == (0, [0])
    assert eng.place(0, 0, 1, 200, 1 << 1)[1:] == (1, [0])
    assert state.gpu_free.tolist() == [700, 1000, 800]
    assert eng.score("fgd", 0, 0, 1, 300, 0).tolist() == [50, 37]
    status, node, gpus = eng.place(0, 0, 1, 300, 0)
    assert status.ok and (node, gpus) == (0, [1])
    assert state.gpu_free.tolist() == [700, 700, 800]


def test_fgd_node_choice_by_fragmentation() -> None:
    # Target workload: 2-GPU tasks. Node 0 ([500, 1000]) cannot host one, so all its idle
    # GPU is fragmented (1500); a 1-GPU task there leaves 500 fragmented (gradient +1000).
    # Node 1 ([1000, 1000]) can (nothing fragmented); the task leaves 1000 (gradient -1000).
    w = make_workload([(0, 2, 1000, 0, 1)])
    r = Request(0, 0, 1, 1000)
    n0 = _view((500, 1000))  # cannot host 2 GPUs: all 1500 idle is fragmented
    n1 = _view((1000, 1000))  # can: nothing fragmented
    assert node_fragmentation(w, n0.cpu_free, 0, n0.gpu_free) == 1500.0
    assert ref.score_fgd(n0, r, w)[0] == int(100 / (1 + math.exp(-1.0)))  # 1500 -> 500
    assert ref.score_fgd(n1, r, w)[0] == int(100 / (1 + math.exp(1.0)))  # 0 -> 1000
    assert ref.select_node([n0, n1], r, [("fgd", 1)], [1, 0], w) == 0
