"""Topology builders, topology-aware gangs (native greedy and CP-SAT) and rack spans."""

from __future__ import annotations

import heapq
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cplat import _core, topology
from cplat.cluster import new_engine, new_state
from cplat.errors import InputError
from cplat.profile import POLICIES

DESC = {
    "gpu_models": ["A100"],
    "spines": [
        {
            "name": "s0",
            "racks": [
                {
                    "name": "r0",
                    "nodes": [
                        {"count": 2, "cpu_milli": 64000, "memory_mib": 1024, "num_gpu": 8,
                         "gpu_model": "A100", "nvlink_islands": [4, 4]},
                        {"count": 1, "cpu_milli": 8000, "memory_mib": 512},
                    ],
                },
                {"racks_note": "x", "nodes": [{"cpu_milli": 1, "memory_mib": 1, "num_gpu": 2,
                                                "gpu_model": "H100"}]},
            ],
        },
        {"racks": [{"nodes": [{"count": 3, "cpu_milli": 1000, "memory_mib": 10}]}]},
    ],
}  # fmt: skip


def _engine(topo: topology.Topology, seed: int = 0) -> tuple[_core.ClusterState, _core.Engine]:
    state = new_state(topo.nodes)
    topology.apply(topo, state)
    return state, new_engine(state, POLICIES["bestfit"], seed)


# --- builders ----------------------------------------------------------------------------


def test_from_dict_columns() -> None:
    topo = topology.from_dict(DESC)
    nodes = topo.nodes
    assert len(nodes) == 7
    assert nodes.rack.tolist() == [0, 0, 0, 1, 2, 2, 2]
    assert nodes.spine.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert nodes.num_gpu.tolist() == [8, 8, 0, 2, 0, 0, 0]
    assert nodes.gpu_model.tolist() == [0, 0, -1, 1, -1, -1, -1]
    assert nodes.models.names == ("A100", "H100")
    assert topo.gpu_nvlink.tolist() == [0, 0, 0, 0, 1, 1, 1, 1] * 2 + [0, 0]
    assert topo.gpu_numa.tolist() == topo.gpu_nvlink.tolist()
    assert topo.num_racks == 3 and topo.num_spines == 2
    assert len(set(nodes.name)) == 7


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        (lambda d: d.update(spines=[]), "description.spines"),
        (lambda d: d["spines"][0]["racks"][0]["nodes"][0].update(count="2"),
         "spines[0].racks[0].nodes[0].count"),
        (lambda d: d["spines"][0]["racks"][0]["nodes"][0].update(nvlink_islands=[4, 2]),
         "spines[0].racks[0].nodes[0].nvlink_islands"),
        (lambda d: d["spines"][1]["racks"][0]["nodes"][0].pop("cpu_milli"),
         "spines[1].racks[0].nodes[0].cpu_milli"),
        (lambda d: d["spines"][1].update(racks="r"), "spines[1].racks"),
        (lambda d: d["spines"][0]["racks"][1]["nodes"][0].update(num_gpu=-1),
         "spines[0].racks[1].nodes[0].num_gpu"),
    ],
)  # fmt: skip
def test_bad_descriptions_name_the_field(patch: object, field: str) -> None:
    desc = json.loads(json.dumps(DESC))
    patch(desc)  # type: ignore[operator]
    with pytest.raises(InputError) as err:
        topology.from_dict(desc)
    assert err.value.field == field
    assert field in str(err.value)


def test_json_text_and_file(tmp_path: Path) -> None:
    text = json.dumps(DESC)
    assert len(topology.from_json(text).nodes) == 7
    path = tmp_path / "topo.json"
    path.write_text(text)
    assert topology.load(path).nodes.rack.tolist() == [0, 0, 0, 1, 2, 2, 2]
    path.write_text("{bad")
    with pytest.raises(InputError, match="invalid JSON"):
        topology.load(path)


def test_yaml(tmp_path: Path) -> None:
    yaml = pytest.importorskip("yaml")
    path = tmp_path / "topo.yaml"
    path.write_text(yaml.safe_dump(DESC))
    assert len(topology.load(path).nodes) == 7


def test_fat_tree() -> None:
    topo = topology.fat_tree(2, 3, 4, 8)
    assert len(topo.nodes) == 24
    assert topo.num_racks == 6 and topo.num_spines == 2
    assert topo.gpu_nvlink[:8].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert np.bincount(topo.nodes.rack).tolist() == [4] * 6
    with pytest.raises(InputError) as err:
        topology.fat_tree(2, 0, 4)
    assert err.value.field == "racks_per_spine"
    with pytest.raises(InputError) as err:
        topology.fat_tree(1, 1, 1, 8, nvlink_island=3)
    assert err.value.field == "nvlink_island"


def test_gpu_topology_round_trip() -> None:
    topo = topology.fat_tree(1, 1, 2, 8)
    state, _ = _engine(topo)
    assert _core.gpu_nvlink(state).tolist() == topo.gpu_nvlink.tolist()
    with pytest.raises(ValueError, match="one id per GPU"):
        _core.set_gpu_topology(state, np.zeros(3, np.int32), np.zeros(3, np.int32))


# --- native greedy -------------------------------------------------------------------------


def test_code_name_registered() -> None:
    assert "topology_limit" in _core.code_names()
    assert _core.span_limit_names() == ["none", "rack", "spine"]


def test_topology_gang_stays_in_one_rack_and_island() -> None:
    topo = topology.fat_tree(2, 4, 4, 8)  # 32 nodes, racks of 4
    state, engine = _engine(topo, seed=5)
    status, nodes, gpus = engine.place_gang_topology(4000, 64, 4, 1000, 0, 6)
    assert status.ok
    assert _core.gang_span(state, nodes)[:2] == (1, 1)
    # Each 4-GPU task takes one whole NVLink island (devices 0-3 or 4-7).
    for task in gpus.reshape(-1, 4):
        assert len({int(g) // 4 for g in task}) == 1
    assert state.check_invariants()


def test_topology_blind_gang_spreads() -> None:
    topo = topology.fat_tree(2, 4, 4, 8)
    state, engine = _engine(topo, seed=5)
    status, nodes, _ = engine.place_gang(8000, 64, 8, 1000, 0, 4)
    assert status.ok and len(nodes) == 4
    state2, engine2 = _engine(topo, seed=5)
    status2, nodes2, _ = engine2.place_gang_topology(8000, 64, 8, 1000, 0, 4)
    assert status2.ok
    assert _core.gang_span(state2, nodes2)[1] <= _core.gang_span(state, nodes)[1]


def test_span_limits_reject_and_roll_back() -> None:
    topo = topology.fat_tree(2, 2, 2, 8)  # racks of 2 nodes, spines of 4
    state, engine = _engine(topo)
    status, nodes, _ = engine.place_gang_topology(1000, 64, 8, 1000, 0, 3, "rack")
    assert status.code == "topology_limit" and status.plugin == "Topology"
    assert len(nodes) == 0 and state.allocated_gpu_milli == 0
    assert engine.place_gang_topology(1000, 64, 8, 1000, 0, 5, "spine")[0].code == "topology_limit"
    assert engine.place_gang_topology(1000, 64, 8, 1000, 0, 9)[0].code != "ok"
    assert state.allocated_gpu_milli == 0
    status, nodes, _ = engine.place_gang_topology(1000, 64, 8, 1000, 0, 4, "spine")
    assert status.ok and _core.gang_span(state, nodes)[:2] == (1, 2)
    with pytest.raises(ValueError, match="span limit"):
        engine.place_gang_topology(1000, 64, 8, 1000, 0, 1, "pod")


def test_place_gang_on_is_all_or_nothing() -> None:
    topo = topology.fat_tree(1, 1, 2, 8)
    state, engine = _engine(topo)
    status, _ = engine.place_gang_on(1000, 64, 8, 1000, 0, np.array([0, 0], np.int32))
    assert not status.ok and state.allocated_gpu_milli == 0
    status, gpus = engine.place_gang_on(1000, 64, 4, 1000, 0, np.array([0, 1, 0], np.int32))
    assert status.ok and len(gpus) == 12
    assert state.allocated_gpu_milli == 12000


# --- CP-SAT -----------------------------------------------------------------------------------

gang = pytest.importorskip("cplat.policy.gang")
pytest.importorskip("ortools")


def test_cpsat_known_optima() -> None:
    topo = topology.fat_tree(2, 2, 2, 8)  # 8 nodes; 2 four-GPU tasks per node
    state, engine = _engine(topo)
    # 4 tasks fill one rack exactly.
    plan = gang.solve_gang(state, engine, gang.GangRequest(4, 1000, 64, 4, 1000))
    assert plan.ok and plan.optimal
    assert plan.objective == gang.GangObjective(1, 1, 0)
    # 5 tasks inside one spine: two racks, one node left half used.
    plan = gang.solve_gang(state, engine, gang.GangRequest(5, 1000, 64, 4, 1000), max_span="spine")
    assert plan.ok and plan.optimal
    assert plan.objective == gang.GangObjective(1, 2, 1)
    # 5 tasks in one rack cannot exist.
    plan = gang.solve_gang(state, engine, gang.GangRequest(5, 1000, 64, 4, 1000), max_span="rack")
    assert plan.code == "topology_limit" and len(plan.nodes) == 0
    # Nothing was committed by planning.
    assert state.allocated_gpu_milli == 0


def test_cpsat_fills_partial_node() -> None:
    topo = topology.fat_tree(1, 2, 2, 8)
    state, engine = _engine(topo)
    # Node 3 (rack 1) holds one 4-GPU task: the best home for one more is node 3 (fills it).
    assert engine.place_gang_on(1000, 64, 4, 1000, 0, np.array([3], np.int32))[0].ok
    plan = gang.solve_gang(state, engine, gang.GangRequest(1, 1000, 64, 4, 1000))
    assert plan.optimal and plan.objective == gang.GangObjective(1, 1, 0)
    assert plan.nodes.tolist() == [3]
    status, gpus = gang.commit(engine, gang.GangRequest(1, 1000, 64, 4, 1000), plan)
    assert status.ok and sorted(gpus.tolist()) in ([0, 1, 2, 3], [4, 5, 6, 7])
    assert state.allocated_gpu_milli == 8000


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spines=st.integers(1, 3),
    racks=st.integers(1, 3),
    per_rack=st.integers(1, 3),
    gpus=st.sampled_from([4, 8]),
    preload=st.lists(st.integers(0, 10_000), max_size=12),
    task_gpus=st.sampled_from([1, 2, 4]),
    count=st.integers(1, 12),
    limit=st.sampled_from(["none", "rack", "spine"]),
)
def test_cpsat_never_worse_than_greedy(
    spines: int, racks: int, per_rack: int, gpus: int, preload: list[int], task_gpus: int,
    count: int, limit: str,
) -> None:  # fmt: skip
    topo = topology.fat_tree(spines, racks, per_rack, gpus)
    state, engine = _engine(topo)
    n = len(topo.nodes)
    for p in preload:
        engine.place_gang_on(1000, 64, 1 + p % 2, 1000, 0, np.array([p % n], np.int32))
    req = gang.GangRequest(count, 1000, 64, task_gpus, 1000)
    before = state.allocated_gpu_milli
    plan = gang.solve_gang(state, engine, req, max_span=limit, time_limit=2.0, workers=2)
    assert state.allocated_gpu_milli == before
    code, greedy_nodes = gang.greedy_gang(engine, req, limit)
    assert (code == "ok") == plan.ok
    if plan.ok:
        assert plan.objective is not None and plan.greedy is not None
        assert plan.objective <= plan.greedy
        assert plan.greedy == gang.gang_objective(state, req, greedy_nodes)
        assert len(plan.nodes) == count
        assert gang.commit(engine, req, plan)[0].ok
        assert state.check_invariants()


# --- demonstration: racks spanned on a trace of multi-node jobs ---------------------------


def _replay(topo: topology.Topology, jobs: list[tuple[int, int, int]], aware: bool) -> pa.Table:
    """FCFS replay of (submit, duration, tasks) gangs of 8-GPU tasks; returns a jobs table."""
    state, engine = _engine(topo, seed=3)
    running: list[tuple[int, int, list[int], list[int]]] = []
    now = 0
    out_nodes: list[list[int]] = []
    for j, (submit, duration, tasks) in enumerate(jobs):
        now = max(now, submit)
        while True:
            while running and running[0][0] <= now:
                _, _, nodes, gpus = heapq.heappop(running)
                for i, node in enumerate(nodes):
                    assert engine.release(node, 1000, 64, 8, 1000, gpus[i * 8 : i * 8 + 8]).ok
            place = engine.place_gang_topology if aware else engine.place_gang
            status, nodes_arr, gpus_arr = place(1000, 64, 8, 1000, 0, tasks)
            if status.ok:
                break
            now = max(now, running[0][0])
        heapq.heappush(running, (now + duration, j, nodes_arr.tolist(), gpus_arr.tolist()))
        out_nodes.append(nodes_arr.tolist())
    return pa.table({"job_id": list(range(len(jobs))),
                     "nodes": pa.array(out_nodes, type=pa.list_(pa.int32()))})  # fmt: skip


def test_topology_aware_gangs_span_fewer_racks() -> None:
    topo = topology.fat_tree(4, 4, 8, 8)  # 128 nodes, racks of 8
    rng = np.random.default_rng(7)
    jobs = []
    t = 0
    for _ in range(300):
        t += int(rng.exponential(30))
        jobs.append((t, int(rng.integers(50, 400)), int(rng.choice([2, 4, 8, 16]))))
    blind = topology.racks_spanned(_replay(topo, jobs, aware=False), topo.nodes)
    aware = topology.racks_spanned(_replay(topo, jobs, aware=True), topo.nodes)
    assert len(blind) == len(aware) == 300
    assert aware.mean() < blind.mean()
    # Gangs of up to 8 tasks fit a rack: the aware engine keeps nearly all of them in one.
    small = np.array([tasks <= 8 for _, _, tasks in jobs])
    assert aware[small].mean() < 1.5 < blind[small].mean()


def test_racks_spanned_inputs() -> None:
    topo = topology.fat_tree(1, 2, 2, 8)
    assert topology.racks_spanned([[0, 1], [0, 2, 3], [1], [1, 1]], topo.nodes).tolist() == [1, 2]
    assert topology.racks_spanned([[1]], topo.nodes, min_nodes=1).tolist() == [1]


def test_simulated_topology_aware_gangs_span_fewer_racks() -> None:
    import pyarrow as pa

    from cplat.scheduler import QueuePolicy
    from cplat.sim.run import simulate
    from cplat.topology import fat_tree, racks_spanned
    from cplat.traces.schema import JOB_SCHEMA

    topo = fat_tree(spines=2, racks_per_spine=4, nodes_per_rack=8, gpus_per_node=8)
    rng = np.random.default_rng(3)
    n = 200
    width = rng.integers(2, 9, n)
    jobs = pa.table(
        {
            "job_id": np.arange(n, dtype=np.int64),
            "submit_time": np.sort(rng.integers(0, 20_000, n)).astype(np.int64),
            "duration": rng.integers(300, 3000, n).astype(np.int64),
            "requested_time": pa.nulls(n, pa.int64()),
            "num_tasks": width.astype(np.int32),
            "cpu_milli": np.full(n, 8000, dtype=np.int64),
            "memory_mib": np.zeros(n, dtype=np.int64),
            "num_gpu": np.full(n, 8, dtype=np.int32),
            "gpu_milli": np.full(n, 1000, dtype=np.int32),
            "gpu_models": [""] * n,
            "user": ["u"] * n,
            "group": ["g"] * n,
            "priority": np.zeros(n, dtype=np.int32),
            "queue": ["q"] * n,
        },
        schema=JOB_SCHEMA,
    )
    blind = simulate(jobs, topo.nodes, queue=QueuePolicy("fcfs", "easy"))
    aware = simulate(jobs, topo.nodes, queue=QueuePolicy("fcfs", "easy", topology_aware=True))
    r_blind = np.asarray(racks_spanned(blind.jobs, topo.nodes), dtype=float)
    r_aware = np.asarray(racks_spanned(aware.jobs, topo.nodes), dtype=float)
    assert r_aware.mean() < r_blind.mean()
    rack = simulate(jobs, topo.nodes, queue=QueuePolicy("fcfs", "easy", max_span="rack"))
    assert np.all(np.asarray(racks_spanned(rack.jobs, topo.nodes)) == 1)


def test_multi_gpu_tasks_stay_in_one_numa_domain_when_no_island_fits() -> None:
    from cplat import _core
    from cplat.cluster import new_engine, new_state
    from cplat.pack.synthetic import synthetic_cluster
    from cplat.profile import POLICIES

    nodes = synthetic_cluster(1, seed=0, gpus_per_node=8)
    state = new_state(nodes)
    # Islands of two devices, NUMA domains of four: a 4-GPU task fits no island.
    _core.set_gpu_topology(
        state,
        np.asarray([0, 0, 1, 1, 2, 2, 3, 3], dtype=np.int32),
        np.asarray([0, 0, 0, 0, 1, 1, 1, 1], dtype=np.int32),
    )
    engine = new_engine(state, POLICIES["bestfit"], 0)
    status, nodes_, gpus = engine.place_gang_topology(8000, 0, 4, 1000, 0, 1, "none")
    assert status.ok
    assert sorted(gpus) in ([0, 1, 2, 3], [4, 5, 6, 7])
