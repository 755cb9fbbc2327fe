"""Every policy of the simulator in the live cluster: queue sorts with decayed usage that
survives rebuilds and restarts, reservations and drain windows, exclusive and elastic jobs,
the CP-SAT gang solver, NVLink islands, MIG instances as devices, and preemption with a grace
period. These drive :class:`cplat.runtime.live.LiveCluster` directly (the controller's calls);
tests/test_live_service.py drives the service's API.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from cplat.config import load_scheduler_config
from cplat.errors import InputError
from cplat.policy.fairshare import PastUsage
from cplat.policy.gang import GangSolver
from cplat.profile import POLICIES
from cplat.runtime.discovery import DeviceSlot, device_slots, gpu_domains, mig_share
from cplat.runtime.launch import LaunchError, task_env
from cplat.runtime.live import (
    LiveCluster,
    LiveJob,
    LiveNode,
    LiveReservation,
    job_from_spec,
    node_from_spec,
)
from cplat.scheduler import QueuePolicy

GIB = 1024


def node(name: str, cpu: int = 8, gpus: int = 0, rack: int = 0, **kw: Any) -> LiveNode:
    return LiveNode(name, cpu * 1000, 64 * GIB, gpus, "A100" if gpus else "", rack=rack, **kw)


def job(job_id: int, project: str = "a", *, submit: int = 0, cpu: int = 1, tasks: int = 1,
        gpus: int = 0, gpu_milli: int = 1000, runtime: int = 100,
        **kw: Any) -> LiveJob:  # fmt: skip
    return LiveJob(job_id, project, submit, runtime, tasks, cpu * 1000, GIB, gpus, gpu_milli, **kw)


def cluster(*nodes: LiveNode, queue: QueuePolicy | None = None, **kw: Any) -> LiveCluster:
    live = LiveCluster(POLICIES["bestfit"], queue or QueuePolicy(order="priority"), **kw)
    for n in nodes:
        live.upsert_node(n, 0)
    live.flush(0)
    return live


# Queue sorts ---------------------------------------------------------------------------------


def test_fair_share_orders_the_live_queue_by_real_usage_and_decays_it() -> None:
    live = cluster(node("n1"), queue_sort=("fairshare", {"half_life": 100}))
    live.add(job(1, "a", cpu=8))
    assert live.cycle(0) == [1]
    live.finish(1, 200)  # project a held the whole node for 200 s
    # b submitted later, and with a lower job priority: fair share still puts it first.
    live.add_many([job(2, "a", submit=200, cpu=8, priority=5), job(3, "b", submit=201, cpu=8)])
    assert live.queue_order(201) == [3, 2]
    assert live.cycle(202) == [3]
    report = {p["project"]: p for p in live.fairshare(202)["projects"]}
    assert report["a"]["pending"] == 1 and report["b"]["running"]["cpu_milli"] == 8000
    assert report["a"]["factor"] < report["b"]["factor"] <= 1.0
    # Half-life 100 s: a's usage halves every 100 s while it runs nothing.
    u0 = live.fairshare(300)["projects"][0]["usage"]
    u1 = live.fairshare(400)["projects"][0]["usage"]
    assert u1 == pytest.approx(u0 / 2)


def test_usage_survives_rebuilds_and_restarts() -> None:
    live = cluster(node("n1"), queue_sort=("fairshare", {"half_life": 1000}))
    live.add(job(1, "a", cpu=8))
    live.cycle(0)
    live.finish(1, 100)
    before = live.fairshare(150)["projects"]
    live.upsert_node(node("n2"), 150)  # a node joins: the scheduler is rebuilt
    live.flush(150)
    after = live.fairshare(150)["projects"]
    # The usage is kept by name; the new plugin measures shares against the larger cluster.
    assert after[0]["project"] == "a" and after[0]["usage"] == pytest.approx(before[0]["usage"])
    # A restart: a fresh cluster seeded from the store's finished jobs gets the same usage.
    fresh = LiveCluster(
        POLICIES["bestfit"], QueuePolicy(), queue_sort=("fairshare", {"half_life": 1000})
    )
    fresh.add_history([PastUsage("a", "", (8000.0, GIB, 0.0), 0, 100)], 150)
    fresh.upsert_node(node("n1"), 150)
    fresh.flush(150)
    assert fresh.queue.order == "priority"  # a queue sort implies it, as in cplat sim
    seeded = fresh.fairshare(150)["projects"][0]["usage"]
    assert seeded == pytest.approx(before[0]["usage"], rel=1e-9)
    fresh.add_many([job(5, "a", submit=150), job(6, "b", submit=151)])
    assert fresh.queue_order(152) == [6, 5]


def test_drf_and_multifactor_reach_the_live_queue() -> None:
    live = cluster(node("n1", cpu=4), node("n2", cpu=4), queue_sort=("drf", {}))
    live.add(job(1, "a", cpu=4))
    live.cycle(0)
    live.add_many([job(2, "a", submit=1, cpu=4), job(3, "b", submit=2, cpu=4)])
    assert live.queue_order(3) == [3, 2]  # a already holds half the cluster
    rows = {r["project"]: r for r in live.fairshare(3)["projects"]}
    assert rows["a"]["factor"] == pytest.approx(0.5) and rows["b"]["factor"] == 0.0
    with pytest.raises(InputError) as err:
        LiveCluster(POLICIES["bestfit"], QueuePolicy(), queue_sort=("fairshare", {"bogus": 1}))
    assert err.value.field == "bogus"
    multi = cluster(node("n1"), queue_sort=("multifactor", {"w_age": 0, "w_qos": 0}))
    multi.add_many([job(1, "a", cpu=8), job(2, "b", cpu=8, submit=1)])
    assert multi.queue_order(5) == [1, 2]


def test_profile_selects_queue_sort_gang_solver_and_grace(tmp_path: Any) -> None:
    path = tmp_path / "p.toml"
    path.write_text(
        '[placement]\ngang_solver = "cp-sat"\ngang_time_limit = 0.5\n'
        '[queue]\norder = "fcfs"\nbackfill = "easy"\npreemption = "priority"\n'
        "grace_period = 30\ntopology_aware = true\n"
        '[queue_sort]\nname = "fairshare"\nhalf_life = 3600\n'
    )
    live = LiveCluster.from_config(load_scheduler_config(path))
    assert live.gang == GangSolver("cp-sat", 0.5)
    assert (live.queue.order, live.queue.backfill, live.queue.grace_period) == (
        "priority",
        "easy",
        30,
    )
    assert live.queue_sort == ("fairshare", {"half_life": 3600})
    path.write_text('[placement]\ngang_solver = "magic"\n')
    with pytest.raises(InputError) as err:
        load_scheduler_config(path)
    assert err.value.field == "gang_solver"
    path.write_text("[placement]\ngang_time_limit = -1\n")
    with pytest.raises(InputError) as err:
        load_scheduler_config(path)
    assert err.value.field == "gang_time_limit"


# Reservations ---------------------------------------------------------------------------------


def test_reservation_holds_nodes_for_its_owner() -> None:
    live = cluster(node("n1"), node("n2"))
    live.add_reservation(LiveReservation(1, 100, 200, ("n1",), owner="team"))
    # Other projects: only jobs that end before the window starts may use n1.
    live.add_many([job(1, "x", cpu=8, runtime=50), job(2, "x", cpu=8, runtime=500),
                   job(3, "x", cpu=8, runtime=500)])  # fmt: skip
    started = live.cycle(0)
    assert sorted(started) == [1, 2]
    assert live.placement(2)[0][0] == "n2" and live.placement(1)[0][0] == "n1"
    live.finish(1, 50)
    assert live.cycle(50) == []  # job 3 would run into the window
    live.add(job(4, "team", submit=60, cpu=8, runtime=500, priority=1))
    assert live.cycle(60) == [4] and live.placement(4)[0][0] == "n1"
    live.finish(4, 70)
    assert live.remove_reservation(1) and not live.remove_reservation(1)
    assert live.cycle(80) == [3]


def test_drain_window_keeps_work_off_and_drains_at_its_start() -> None:
    live = cluster(node("n1"), node("n2"))
    with pytest.raises(InputError):
        LiveReservation(1, 10, 5, ("n1",))
    with pytest.raises(InputError):
        LiveReservation(1, 10, 20, ("n1",), owner="x", drain=True)
    live.add_reservation(LiveReservation(7, 100, 200, ("n1",), drain=True))
    live.add_many([job(1, "x", cpu=8, runtime=500), job(2, "x", cpu=8, runtime=500)])
    assert live.cycle(0) == [1] and live.placement(1)[0][0] == "n2"
    assert live.due_drains(99) == []
    assert live.due_drains(100) == [("n1", "draining")]
    assert live.due_drains(150) == []  # once
    assert live.due_drains(200) == [("n1", "up")]
    assert 7 not in live.reservations


def test_capacity_reservations_pick_free_nodes() -> None:
    live = cluster(node("g1", gpus=8), node("g2", gpus=8), node("g3", gpus=4), node("c1"))
    assert live.pick_nodes(0, 100, gpus=12) == ("g1", "g2")
    live.add_reservation(LiveReservation(1, 0, 100, ("g1",), owner="a"))
    assert live.pick_nodes(50, 60, gpus=12) == ("g2", "g3")
    assert live.pick_nodes(100, 200, count=1, gpus=1) == ("g1",)  # after that window
    with pytest.raises(InputError) as err:
        live.pick_nodes(0, 100, gpus=100)
    assert err.value.field == "capacity"
    with pytest.raises(InputError):
        live.pick_nodes(0, 100)


# Exclusive and elastic ------------------------------------------------------------------------


def test_exclusive_jobs_run_alone_and_survive_a_rebuild() -> None:
    live = cluster(node("n1"), node("n2"))
    live.add_many([job(1, cpu=1, exclusive=True), job(2, cpu=1), job(3, cpu=1)])
    live.cycle(0)
    n1 = live.placement(1)[0][0]
    assert all(live.placement(j)[0][0] != n1 for j in (2, 3))
    live.upsert_node(node("n3"), 1)
    live.flush(1)
    live.add(job(4, cpu=1, submit=1))
    live.cycle(1)
    assert live.placement(4)[0][0] != n1


def test_elastic_jobs_start_small_grow_and_report_the_resize() -> None:
    live = cluster(node("n1", cpu=4), node("n2", cpu=4))
    live.add(job(1, "a", cpu=4, runtime=1000))
    live.cycle(0)
    live.add(job(2, "b", submit=1, cpu=4, tasks=3, min_tasks=1))
    assert live.cycle(1) == [2] and len(live.placement(2)) == 1
    assert live.elastic_range(2) == (1, 3) and live.elastic_range(1) is None
    live.finish(1, 10)
    live.cycle(10)
    assert live.resized() == [2] and len(live.placement(2)) == 2
    spec = {"tasks": {"count": 3, "min_count": 2, "resources": {"cpu_milli": 1, "memory_mib": 1,
            "num_gpu": 0, "gpu_milli": 1000, "gpu_models": []}}, "max_runtime": 5,
            "priority": 0, "exclusive": True}  # fmt: skip
    parsed = job_from_spec(9, "p", "u", 3.5, spec)
    assert parsed.elastic and parsed.exclusive and parsed.user == "u" and parsed.min_tasks == 2


def test_elastic_tasks_get_the_torchrun_rendezvous(tmp_path: Any) -> None:
    assignment = {"job_id": 42, "attempt": 1, "rank": 0, "world_size": 2, "master_addr": "10.0.0.5",
                  "master_port": 23456, "env": {"PET_NNODES": "9", "PET_MAX_RESTARTS": "1"},
                  "elastic": {"min_tasks": 2, "max_tasks": 4}}  # fmt: skip
    env = task_env(assignment, {}, "http://s", None, tmp_path)
    assert env["PET_NNODES"] == "2:4" and env["PET_RDZV_BACKEND"] == "c10d"
    assert env["PET_RDZV_ENDPOINT"] == "10.0.0.5:23456" and env["PET_RDZV_ID"] == "cplat-job-42"
    assert env["PET_MAX_RESTARTS"] == "1"  # the job's own
    plain = task_env({**assignment, "elastic": None}, {}, "http://s", None, tmp_path)
    assert plain["PET_NNODES"] == "9" and "PET_RDZV_ID" not in plain
    for bad in ({"min_tasks": 3, "max_tasks": 2}, {"min_tasks": 0, "max_tasks": 2}, [1, 2]):
        with pytest.raises(LaunchError):
            task_env({**assignment, "elastic": bad}, {}, "http://s", None, tmp_path)


# Gangs, islands, MIG --------------------------------------------------------------------------


def test_cp_sat_moves_a_gang_into_one_rack() -> None:
    pytest.importorskip("ortools")
    nodes = [node("a", rack=0), node("b", rack=0), node("c", rack=1), node("d", rack=1)]
    greedy = cluster(*nodes, queue=QueuePolicy(order="fcfs"))
    solved = cluster(*nodes, queue=QueuePolicy(order="fcfs"), gang=GangSolver("cp-sat", 2.0))
    for live in (greedy, solved):
        # Half of a and half of c are busy: best fit puts a 2 x 4-core gang on a and c.
        assert live.restore(job(1, cpu=4), 0, [("a", [])]) == "ok"
        assert live.restore(job(2, cpu=4), 0, [("c", [])]) == "ok"
        live.add(job(3, cpu=4, tasks=2))
        assert live.cycle(1) == [3]
    racks = {n.name: n.rack for n in nodes}
    assert {racks[n] for n, _ in greedy.placement(3)} == {0, 1} and greedy.moved == []
    assert len({racks[n] for n, _ in solved.placement(3)}) == 1 and solved.moved == [3]
    solved.finish(3, 2)  # the moved gang's resources come back whole
    assert solved.allocated("b") == (0, 0, 0) and solved.allocated("d") == (0, 0, 0)


def gpu(index: int, peers: list[int], numa: int = 0, **kw: Any) -> dict[str, Any]:
    return {"index": index, "model": "A100-SXM4-80GB", "memory_mib": 81920,
            "nvlink_peers": peers, "numa_node": numa, **kw}  # fmt: skip


def test_discovered_nvlink_islands_steer_multi_gpu_tasks() -> None:
    spec = {"cpu_milli": 32000, "memory_mib": 256 * GIB,
            "gpus": [gpu(0, [1]), gpu(1, [0]), gpu(2, [3], 1), gpu(3, [2], 1)]}  # fmt: skip
    assert gpu_domains(spec["gpus"]) == ([0, 0, 1, 1], [0, 0, 1, 1])
    live = cluster(node_from_spec("n", spec), queue=QueuePolicy(order="fcfs", topology_aware=True))
    assert live.restore(job(1, gpus=1), 0, [("n", [1])]) == "ok"
    live.add(job(2, gpus=2))
    live.cycle(0)
    assert live.placement(2) == [("n", [2, 3])]  # one island, not GPUs 0 and 2


MIG_GPU = gpu(
    0,
    [],
    mig_mode=True,
    mig_instances=[
        {"gi_id": 1, "ci_id": 0, "uuid": "MIG-1111", "profile": "3g.40gb", "memory_mib": 40192},
        {"gi_id": 5, "ci_id": 0, "uuid": "MIG-2222", "profile": "1g.10gb", "memory_mib": 9728},
        {"gi_id": 9, "uuid": "GPU-not-a-mig; rm -rf /", "profile": "1g.10gb"},
    ],
)


def test_mig_instances_are_placed_as_devices() -> None:
    slots = device_slots([MIG_GPU, gpu(1, [])])
    assert slots == [DeviceSlot(0, 500, "MIG-1111", "3g.40gb"),
                     DeviceSlot(0, 125, "MIG-2222", "1g.10gb"), DeviceSlot(1)]  # fmt: skip
    assert mig_share({"profile": "2g.20gb"}, 0) == 285
    live = cluster(node_from_spec("m", {"cpu_milli": 16000, "memory_mib": 64 * GIB,
                                        "gpus": [MIG_GPU, gpu(1, [])]}))  # fmt: skip
    live.add_many([job(1, gpus=1, gpu_milli=250), job(2, gpus=1, gpu_milli=100),
                   job(3, gpus=1), job(4, gpus=1)])  # fmt: skip
    assert sorted(live.cycle(0)) == [1, 2, 3]  # no whole GPU is left for job 4
    assert live.placement(1) == [("m", [0])]  # 0.25 GPU fits the 3g.40gb, not the 1g.10gb
    assert live.placement(2) == [("m", [1])]  # best fit: the smallest instance that holds it
    assert live.placement(3) == [("m", [2])]
    assert [d.visible() for d in live.devices("m", [0, 1, 2])] == ["MIG-1111", "MIG-2222", "1"]
    assert live.allocated("m")[2] == 250 + 100 + 1000
    assert live.totals()[2] == 1350 and live.num_running == 3
    # An unhealthy MIG GPU takes its instances out; they come back when it heals.
    live.cancel(4)
    live.finish(1, 1)
    live.set_unhealthy("m", [0])
    live.add(job(5, gpus=1, gpu_milli=250, submit=1))
    assert live.cycle(1) == []
    live.set_unhealthy("m", [])
    assert live.cycle(2) == [5]


# Preemption with a grace period ---------------------------------------------------------------


def test_preempted_jobs_keep_their_resources_for_the_grace_period() -> None:
    queue = QueuePolicy(order="priority", preemption="priority", grace_period=30)
    live = cluster(node("n1"), queue=queue)
    live.add(job(1, "low", cpu=8, runtime=1000))
    live.cycle(0)
    live.add(job(2, "high", cpu=8, priority=10, submit=5))
    assert live.cycle(5) == [] and live.preempted() == [1]
    assert live.grace_of(1) == 30 and "grace" in live.reason(1)
    assert live.cycle(20) == [] and live.grace_of(1) == 15
    assert live.cycle(35) == [2]  # the grace is over: the victim is requeued, the head starts
    assert live.state(1) == "pending" and live.grace_of(1) == 0
    # A victim whose tasks are gone early frees its resources at once.
    live.add(job(3, "higher", cpu=8, priority=20, submit=40))
    assert live.cycle(40) == [] and live.preempted() == [2]
    assert live.release_evicted(2, 41) and not live.release_evicted(2, 41)
    assert live.cycle(41) == [3]
    assert math.isclose(live.totals()[0], 8000)
