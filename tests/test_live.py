"""The live cluster: nodes joining, leaving and failing around one scheduler."""

from __future__ import annotations

import numpy as np
import pytest

from cplat.profile import POLICIES
from cplat.runtime import live as live_mod
from cplat.runtime.live import LiveCluster, LiveJob, LiveNode
from cplat.scheduler import QueuePolicy, Quota, Quotas


def cluster() -> LiveCluster:
    return LiveCluster(POLICIES["bestfit"], QueuePolicy(order="priority", backfill="easy"))


def job(i: int, gpus: int = 1, models: tuple[str, ...] = (), tasks: int = 1) -> LiveJob:
    return LiveJob(i, "p", i, 3600, tasks, 1000, 1024, gpus, 1000, models)


def node(name: str, gpus: int = 4, model: str = "A100-SXM4-80GB") -> LiveNode:
    return LiveNode(name, 32000, 256 * 1024, gpus, model)


def test_a_joining_node_keeps_running_jobs_where_they_are() -> None:
    c = cluster()
    c.upsert_node(node("a"), 0)
    for i in range(1, 4):
        c.add(job(i))
    assert c.cycle(1) == [1, 2, 3]
    before = {j: c.placement(j) for j in (1, 2, 3)}
    c.add(job(4, gpus=4))  # does not fit on a (one GPU left)
    assert c.cycle(2) == []
    c.upsert_node(node("b", model="H100-SXM5-80GB"), 3)  # rebuild
    assert c.lost == []
    assert {j: c.placement(j) for j in (1, 2, 3)} == before
    assert c.cycle(4) == [4]
    assert c.placement(4) == [("b", [0, 1, 2, 3])]
    assert c.allocated("a")[2] == 3000 and c.allocated("b")[2] == 4000


def test_model_families_and_parked_jobs() -> None:
    c = cluster()
    assert c.state(9) == "unknown"
    c.add(job(1, models=("A100",)))
    assert c.state(1) == "parked" and c.reason(1) == "no nodes registered"
    c.upsert_node(node("h", model="H100-SXM5-80GB"), 0)
    assert c.reason(1) == "no nodes registered"  # until the next cycle rebuilds
    c.flush(0)
    assert c.reason(1) == "no node has GPU model A100"
    c.add(job(2, models=("h100",)))  # family names ignore case
    assert c.cycle(1) == [2]
    c.upsert_node(node("a", model="A100-SXM4-80GB"), 2)
    c.flush(2)
    assert c.state(1) == "pending"
    assert c.cycle(3) == [1] and c.placement(1)[0][0] == "a"
    # An exact model name works too; a prefix without the dash does not.
    c.add(job(3, models=("A100-SXM4-80GB",)))
    c.add(job(4, models=("A10",)))
    assert c.cycle(4) == [3]
    assert c.reason(4) == "no node has GPU model A10"


def test_unhealthy_gpus_are_held_until_their_user_is_gone() -> None:
    c = cluster()
    c.upsert_node(node("a", gpus=2), 0)
    c.add(job(1))
    assert c.cycle(1) == [1]
    [(_, [busy])] = c.placement(1)
    c.set_unhealthy("a", [busy, 1 - busy])
    c.add(job(2))
    assert c.cycle(2) == []
    c.finish(1, 3)  # the busy GPU is now held too
    assert c.cycle(4) == []
    assert c.num_running == 0 and c.allocated("a")[2] == 0
    c.set_unhealthy("a", [busy])
    assert c.cycle(5) == [2] and c.placement(2)[0][1] == [1 - busy]


def test_down_node_and_requeue() -> None:
    c = cluster()
    c.upsert_node(node("a"), 0)
    c.upsert_node(node("b"), 0)
    c.add(job(1, gpus=4, tasks=2))
    assert c.cycle(1) == [1]
    assert sorted(c.jobs_on("a") + c.jobs_on("b")) == [1, 1]
    c.set_node_state("b", "down")
    c.requeue(1, 2)
    assert c.state(1) == "pending"
    assert c.cycle(3) == []
    c.set_node_state("b", "up")
    assert c.cycle(4) == [1]


def test_quota_changes_rebuild_without_losing_jobs() -> None:
    c = cluster()
    c.upsert_node(node("a"), 0)
    c.add(job(1, gpus=2))
    assert c.cycle(1) == [1]
    c.set_quotas(Quotas([Quota("p", (10**6, 10**9, 3000))]), 2)
    assert c.state(1) == "running" and c.lost == []
    c.add(job(2, gpus=2))  # 2 + 2 GPUs > 3 GPUs of quota
    assert c.cycle(3) == []
    assert c.reason(2) == "quota_exceeded"
    c.finish(1, 4)
    assert c.cycle(5) == [2]


def test_a_burst_of_registrations_costs_one_rebuild(monkeypatch: pytest.MonkeyPatch) -> None:
    c = cluster()
    rebuilds = []
    real = c._rebuild

    def counting(now: int) -> None:
        rebuilds.append(now)
        real(now)

    monkeypatch.setattr(c, "_rebuild", counting)
    for i in range(50):
        c.upsert_node(node(f"n{i}"), 0)
        c.set_node_state(f"n{i}", "cordoned" if i % 2 else "up")
    c.add(job(1, gpus=4, tasks=30))
    assert c.allocated("n0") == (0, 0, 0) and c.jobs_on("n0") == []
    assert c.cycle(1) == []  # 25 up nodes cannot hold 30 tasks
    assert rebuilds == [1]
    c.set_node_state("n1", "up")
    c.set_node_state("n3", "up")
    c.set_node_state("n5", "up")
    c.set_node_state("n7", "up")
    c.set_node_state("n9", "up")
    assert c.cycle(2) == [1] and rebuilds == [1]
    assert len({n for n, _ in c.placement(1)}) == 30


def test_finished_jobs_are_compacted_away(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live_mod, "COMPACT_AFTER", 5)
    c = cluster()
    c.upsert_node(node("a"), 0)
    for i in range(1, 30):
        c.add(job(i))
        assert c.cycle(i) == [i]
        c.finish(i, i)
    assert c.sched is not None and c.sched.num_jobs <= 5 + 2
    c.add(job(100))
    assert c.cycle(101) == [100]
    assert np.asarray(c.sched.state.gpu_free).min() >= 0
