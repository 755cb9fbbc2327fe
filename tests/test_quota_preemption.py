"""Quotas (hard limits, borrowing, reclaim), preemption and checkpoint-aware requeue."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cplat.errors import InputError
from cplat.model import GpuModels, NodeTable
from cplat.scheduler import Checkpointing, QueuePolicy, Quota, Quotas
from cplat.sim.run import simulate
from cplat.traces.schema import JOB_SCHEMA

CPU = 1000


def cluster(n: int) -> NodeTable:
    return NodeTable(
        name=tuple(f"n{i}" for i in range(n)),
        cpu_milli=np.full(n, CPU, dtype=np.int64),
        memory_mib=np.zeros(n, dtype=np.int64),
        num_gpu=np.zeros(n, dtype=np.int32),
        gpu_model=np.full(n, -1, dtype=np.int32),
        models=GpuModels(()),
    )


def jobs(rows: list[tuple[int, int, int, str, int]]) -> pa.Table:
    """Rows of (submit, duration, width, group, priority)."""
    n = len(rows)
    col = list(zip(*rows, strict=True))
    return pa.table(
        {
            "job_id": np.arange(n, dtype=np.int64),
            "submit_time": np.asarray(col[0], dtype=np.int64),
            "duration": np.asarray(col[1], dtype=np.int64),
            "requested_time": np.asarray(col[1], dtype=np.int64),
            "num_tasks": np.asarray(col[2], dtype=np.int32),
            "cpu_milli": np.full(n, CPU, dtype=np.int64),
            "memory_mib": np.zeros(n, dtype=np.int64),
            "num_gpu": np.zeros(n, dtype=np.int32),
            "gpu_milli": np.zeros(n, dtype=np.int32),
            "gpu_models": [""] * n,
            "user": ["u"] * n,
            "group": list(col[3]),
            "priority": np.asarray(col[4], dtype=np.int32),
            "queue": ["q"] * n,
        },
        schema=JOB_SCHEMA,
    )


def cpus(k: int) -> tuple[int, int, int]:
    return (k * CPU, 0, 0)


def usage_over_time(res, group: str) -> int:
    """Peak number of CPUs the group held at once."""
    groups = res.columns.group
    events = []
    for j in range(len(groups)):
        if groups[j] == group and res.start[j] >= 0:
            events += [(int(res.start[j]), 1, int(res.columns.num_tasks[j]))]
            events += [(int(res.end[j]), 0, -int(res.columns.num_tasks[j]))]
    peak = cur = 0
    for _, _, d in sorted(events):
        cur += d
        peak = max(peak, cur)
    return peak


def test_hard_limit_without_cohort() -> None:
    t = jobs([(0, 100, 2, "a", 0)] * 4)
    res = simulate(t, cluster(8), quotas=Quotas([Quota("a", nominal=cpus(4))]))
    assert usage_over_time(res, "a") == 4
    assert sorted(res.start.tolist()) == [0, 0, 100, 100]


def test_borrowing_from_an_idle_cohort_member() -> None:
    q = Quotas(
        [
            Quota("a", nominal=cpus(4), borrowing_limit=cpus(4), cohort="c"),
            Quota("b", nominal=cpus(4), cohort="c"),
        ]
    )
    res = simulate(jobs([(0, 100, 2, "a", 0)] * 4), cluster(8), quotas=q)
    assert usage_over_time(res, "a") == 8  # borrowed b's idle quota
    q_no_lend = Quotas(
        [
            Quota("a", nominal=cpus(4), borrowing_limit=cpus(4), cohort="c"),
            Quota("b", nominal=cpus(4), lending_limit=cpus(2), cohort="c"),
        ]
    )
    assert (
        usage_over_time(
            simulate(jobs([(0, 100, 2, "a", 0)] * 4), cluster(8), quotas=q_no_lend), "a"
        )
        == 6
    )


def test_reclaim_preempts_borrowers_when_the_lender_needs_its_quota() -> None:
    q = Quotas(
        [
            Quota("a", nominal=cpus(4), borrowing_limit=cpus(4), cohort="c"),
            Quota("b", nominal=cpus(4), cohort="c"),
        ]
    )
    t = jobs([(0, 1000, 2, "a", 0)] * 4 + [(10, 50, 4, "b", 0)])
    waits = simulate(t, cluster(8), quotas=q)
    assert waits.start[4] == 1000  # b waits for a's borrowed jobs to end
    res = simulate(
        t, cluster(8), quotas=q, queue=QueuePolicy(preemption="reclaim"), record_log=True
    )
    assert res.start[4] == 10 and res.preemptions == 2
    evicted = [line.split("\t")[2] for line in res.log if "\trequeue\t" in line]
    assert all(res.columns.group[int(j)] == "a" for j in evicted)
    assert np.all(res.end >= 0)


def test_priority_preemption_only_evicts_lower_priority() -> None:
    t = jobs([(0, 1000, 4, "x", 1), (0, 1000, 4, "x", 5), (10, 100, 4, "y", 3)])
    res = simulate(t, cluster(8), queue=QueuePolicy(order="priority", preemption="priority"))
    assert res.start[2] == 10  # evicted the priority-1 job, not the priority-5 one
    assert res.jobs.column("restarts").to_pylist() == [1, 0, 0]
    plain = simulate(t, cluster(8), queue=QueuePolicy(order="priority"))
    assert plain.start[2] == 1000


def test_checkpointing_bounds_lost_work_and_adds_its_cost() -> None:
    ck = Checkpointing(interval=100, cost=10)
    assert ck.wall_time(250) == 270  # checkpoints after 100 and 200 s of work
    assert ck.saved_work(elapsed=225, work_left=250) == 200
    t = jobs([(0, 1000, 8, "x", 1), (550, 100, 8, "y", 9)])
    q = QueuePolicy(order="priority", preemption="priority")
    res = simulate(t, cluster(8), queue=q, checkpoint=ck)
    # Stopped at 550 after 5 checkpoint periods (500 s of work saved), resumes at 650.
    assert res.start[1] == 550 and res.start[0] == 650
    assert res.end[0] == 650 + ck.wall_time(500)
    assert res.lost_work == pytest.approx(0 * 8 * CPU)  # 550 = 5 x (100 + 10): nothing lost
    no_ck = simulate(t, cluster(8), queue=q)
    assert no_ck.lost_work == pytest.approx(550 * 8 * CPU)
    assert no_ck.end[0] == 650 + 1000


def test_checkpoint_aware_victims_lose_less_than_random_ones() -> None:
    rng = np.random.default_rng(4)
    rows = [
        (int(s), int(d), 1, "low", 0)
        for s, d in zip(rng.integers(0, 2000, 60), rng.integers(300, 3000, 60), strict=True)
    ]
    rows += [(int(s), 200, 4, "high", 10) for s in rng.integers(500, 4000, 25)]
    t = jobs(sorted(rows))
    ck = Checkpointing(interval=600, cost=30)
    smart = simulate(
        t, cluster(8), queue=QueuePolicy(order="priority", preemption="priority"), checkpoint=ck
    )
    rand = [
        simulate(
            t, cluster(8), checkpoint=ck, seed=s,
            queue=QueuePolicy(order="priority", preemption="priority", random_victims=True),
        ).lost_work
        for s in range(5)
    ]  # fmt: skip
    assert smart.preemptions > 0
    assert smart.lost_work < float(np.mean(rand))


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 200),
            st.integers(1, 80),
            st.integers(1, 4),
            st.sampled_from("ab"),
            st.integers(0, 3),
        ),
        min_size=1,
        max_size=25,
    ),
    st.sampled_from(["none", "priority", "reclaim", "both"]),
)
def test_hard_quotas_never_exceeded(rows, preemption: str) -> None:
    q = Quotas(
        [
            Quota("a", nominal=cpus(3), borrowing_limit=cpus(2), cohort="c"),
            Quota("b", nominal=cpus(3), borrowing_limit=cpus(1), cohort="c"),
        ]
    )
    res = simulate(
        jobs(sorted(rows)),
        cluster(6),
        quotas=q,
        queue=QueuePolicy(order="priority", preemption=preemption),
    )
    assert usage_over_time(res, "a") <= 5
    assert usage_over_time(res, "b") <= 4
    assert np.all(res.end >= 0)  # everything fits eventually


def test_bad_quota_and_preemption_names() -> None:
    with pytest.raises(InputError, match="preemption"):
        QueuePolicy(preemption="sometimes")
    with pytest.raises(InputError, match="two quotas"):
        Quotas([Quota("a", cpus(1)), Quota("a", cpus(2))])
    with pytest.raises(InputError, match="nominal"):
        Quotas([Quota("a", (1, 2))])  # type: ignore[arg-type]


def test_pending_reason_names_the_blocking_plugin() -> None:
    q = Quotas([Quota("a", nominal=cpus(2))])
    res = simulate(jobs([(0, 10, 4, "a", 0), (0, 10, 9, "b", 0)]), cluster(8), quotas=q)
    assert res.jobs.column("pending_reason").to_pylist() == ["quota_exceeded", "insufficient_cpu"]


def test_profile_file_drives_the_simulation(tmp_path) -> None:
    from cplat.cli.main import main
    from cplat.config import load_scheduler_config

    profile = tmp_path / "p.toml"
    profile.write_text(
        """
[placement]
scorers = { bestfit = 2, worstfit = 1 }
[queue]
order = "priority"
backfill = "easy"
preemption = "both"
[checkpoint]
interval = 600
cost = 30
[[quota]]
project = "g1"
cohort = "c"
nominal = { cpu = 16 }
borrowing_limit = { cpu = 16 }
"""
    )
    cfg = load_scheduler_config(profile)
    assert cfg.placement.scorers == (("bestfit", 2), ("worstfit", 1))
    assert cfg.queue.preemption == "both" and cfg.checkpoint == Checkpointing(600, 30)
    assert cfg.quotas is not None and cfg.quotas.arrays()[1].tolist() == [16000, 0, 0]
    out = tmp_path / "o"
    args = ["sim", "--profile", str(profile), "--synthetic-jobs", "300", "--synthetic-nodes", "32"]
    assert main([*args, "--out", str(out)]) == 0
    assert (out / "summary.json").is_file()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[placement]\nscorers = { magic = 1 }\n", "unknown scorer 'magic' (valid: random"),
        ("[queue]\norder = 'lifo'\n", "unknown queue order 'lifo'"),
        ("[queue]\nspeed = 3\n", "unknown key in [queue]"),
        ("[scheduler]\n", "unknown key in [profile]"),
        ("[[quota]]\nproject = 'a'\nnominal = { tpu = 1 }\n", "unknown key in [nominal]"),
        ("[queue\n", "invalid TOML"),
    ],
)
def test_bad_profiles_are_clear_errors(tmp_path, text: str, fragment: str) -> None:
    from cplat.config import load_scheduler_config

    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        load_scheduler_config(path)
    assert fragment in str(info.value) and str(info.value).startswith(str(path))


def test_exclusive_jobs_share_their_nodes_with_nobody() -> None:
    t = jobs([(0, 100, 1, "x", 0), (1, 100, 1, "y", 0), (2, 100, 1, "z", 0)])
    nodes = NodeTable(
        name=("n0", "n1"),
        cpu_milli=np.full(2, 4 * CPU, dtype=np.int64),
        memory_mib=np.zeros(2, dtype=np.int64),
        num_gpu=np.zeros(2, dtype=np.int32),
        gpu_model=np.full(2, -1, dtype=np.int32),
        models=GpuModels(()),
    )
    shared = simulate(t, nodes)
    assert shared.start.tolist() == [0, 1, 2]
    res = simulate(t, nodes, exclusive=np.array([True, False, False]))
    placed = res.jobs.column("nodes").to_pylist()
    assert res.start.tolist() == [0, 1, 2]
    assert placed[1] == placed[2] != placed[0]  # the others share the other node
    res = simulate(t, nodes, exclusive=np.array([False, True, True]))
    # The first job occupies one node; each exclusive job needs an idle node of its own.
    assert res.start.tolist() == [0, 1, 100]


def test_reservations_keep_nodes_for_their_owner() -> None:
    q = Quotas([Quota("owner", nominal=cpus(8)), Quota("other", nominal=cpus(8))])
    t = jobs([(0, 50, 4, "other", 0), (0, 500, 4, "other", 0), (100, 50, 4, "owner", 0)])
    res = simulate(t, cluster(8), quotas=q, reservations=[(100, 300, [4, 5, 6, 7], "owner")])
    placed = res.jobs.column("nodes").to_pylist()
    # The 50 s job ends before the window: it may use reserved nodes; the 500 s job may not.
    assert res.start[0] == 0 and res.start[1] in (0, 50)
    assert set(placed[1]).isdisjoint({4, 5, 6, 7})
    assert res.start[2] == 100 and set(placed[2]) == {4, 5, 6, 7}
    with pytest.raises(InputError):
        simulate(t, cluster(8), reservations=[(0, 10, [99], "")])


@pytest.mark.parametrize("backfill", ["easy", "conservative"])
def test_backfill_respects_reservations(backfill: str) -> None:
    t = jobs([(0, 100, 6, "a", 0), (1, 1000, 2, "a", 0), (2, 1000, 8, "a", 0)])
    res = simulate(
        t, cluster(8), queue=QueuePolicy("fcfs", backfill), reservations=[(200, 400, [0, 1], "")]
    )
    placed = res.jobs.column("nodes").to_pylist()
    for j in range(3):
        end = res.end[j]
        if res.start[j] < 400 and end > 200:
            assert set(placed[j]).isdisjoint({0, 1}), (j, res.start[j], end, placed[j])


def test_elastic_jobs_start_small_and_grow_into_idle_capacity() -> None:
    t = jobs([(0, 100, 4, "x", 0), (1, 100, 8, "y", 0)])
    rigid = simulate(t, cluster(8))
    assert rigid.start.tolist() == [0, 100] and rigid.end[1] == 200
    res = simulate(t, cluster(8), elastic_min=np.array([4, 2]), record_log=True)
    assert res.start.tolist() == [0, 1]
    # 4 of 8 tasks from 1 to 100 (49 full-size seconds done), then 8 tasks for the rest.
    assert res.end[1] == 100 + (100 - 99 * 4 // 8)
    assert any("\tresize\t1\t8 tasks" in line for line in res.log)


def test_elastic_jobs_shrink_instead_of_being_evicted() -> None:
    t = jobs([(0, 1000, 8, "low", 0), (10, 50, 4, "high", 5)])
    q = QueuePolicy(order="priority", preemption="priority")
    res = simulate(t, cluster(8), queue=q, elastic_min=np.array([2, 4]))
    assert res.start[1] == 10
    assert res.jobs.column("restarts").to_pylist() == [0, 0]
    assert res.preemptions == 0
    rigid = simulate(t, cluster(8), queue=q)
    assert rigid.preemptions == 1 and rigid.start[1] == 10


def test_grace_period_lets_the_victim_checkpoint_first() -> None:
    t = jobs([(0, 1000, 8, "low", 0), (700, 50, 8, "high", 5)])
    ck = Checkpointing(interval=600, cost=30)
    now = simulate(
        t, cluster(8), queue=QueuePolicy("priority", preemption="priority"), checkpoint=ck
    )
    assert now.start[1] == 700
    assert now.lost_work == pytest.approx((700 - 630) * 8 * CPU)
    graced = simulate(
        t,
        cluster(8),
        queue=QueuePolicy("priority", preemption="priority", grace_period=60),
        checkpoint=ck,
        record_log=True,
    )
    assert graced.start[1] == 760  # waits for the victim's grace period
    assert graced.lost_work == 0.0  # the final checkpoint secured everything
    # Resumed at 810 with 1000 - 700 s of work left (plus no further checkpoint).
    assert graced.start[0] == 810 and graced.end[0] == 810 + ck.wall_time(300)
    assert any("\tevict\t0\tgrace 60 s" in line for line in graced.log)


def test_overcommitted_pool_admits_more_than_its_nominal() -> None:
    t = jobs([(0, 100, 2, "a", 0)] * 4)
    q = Quotas([Quota("a", nominal=cpus(4), overcommit=1.5)])
    assert usage_over_time(simulate(t, cluster(8), quotas=q), "a") == 6
    with pytest.raises(InputError, match="overcommit"):
        Quotas([Quota("a", nominal=cpus(4), overcommit=0.5)])


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 150),
            st.integers(1, 60),
            st.integers(1, 4),
            st.sampled_from("ab"),
            st.integers(0, 3),
        ),
        min_size=2,
        max_size=20,
    ),
    st.sampled_from(["priority", "reclaim", "both"]),
)
def test_evictions_are_justified(rows, preemption: str) -> None:
    """A job is only evicted for a higher-priority job or by a lender reclaiming its quota."""
    q = Quotas(
        [
            Quota("a", nominal=cpus(3), borrowing_limit=cpus(3), cohort="c"),
            Quota("b", nominal=cpus(3), borrowing_limit=cpus(3), cohort="c"),
        ]
    )
    t = jobs(sorted(rows))
    res = simulate(
        t,
        cluster(6),
        quotas=q,
        queue=QueuePolicy("priority", preemption=preemption),
        record_log=True,
    )
    started_at: dict[int, list[int]] = {}
    for line in res.log:
        time_, kind, job, *_ = line.split("\t")
        if kind == "start":
            started_at.setdefault(int(time_), []).append(int(job))
    prio, group = res.columns.priority, res.columns.group
    for line in res.log:
        time_, kind, job, *rest = line.split("\t")
        if kind != "requeue" or "preempted" not in rest[0]:
            continue
        victim = int(job)
        winners = started_at.get(int(time_), [])
        ok = any(prio[w] > prio[victim] for w in winners) if preemption != "reclaim" else False
        ok = ok or (preemption != "priority" and any(group[w] != group[victim] for w in winners))
        assert ok, (line, winners)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 200), st.integers(1, 80), st.integers(1, 6)),
        min_size=1,
        max_size=20,
    ),
    st.sampled_from(["easy", "conservative"]),
    st.integers(0, 300),
    st.integers(20, 200),
)
# A head that could start early on reserved nodes (it ends before the window) once took the
# nodes the plan had promised the next job.
@example(
    rows=[(0, 2, 1), (0, 4, 2), (1, 1, 6), (1, 2, 4)], backfill="conservative", r_start=3, r_len=20
)
def test_backfill_guarantees_hold_with_reservations(
    rows, backfill: str, r_start: int, r_len: int
) -> None:
    t = jobs(sorted((s, d, w, "g", 0) for s, d, w in rows))
    res = simulate(
        t,
        cluster(8),
        queue=QueuePolicy("fcfs", backfill),
        reservations=[(r_start, r_start + r_len, [0, 1], "")],
    )
    placed = res.jobs.column("nodes").to_pylist()
    for j in range(t.num_rows):
        if res.start[j] < 0:
            continue
        if res.start[j] < r_start + r_len and res.end[j] > r_start:
            assert set(placed[j]).isdisjoint({0, 1})
    reserved = res.reservation >= 0
    assert np.all(res.start[reserved] <= res.reservation[reserved])


def test_nested_cohorts_borrow_across_the_tree_within_subtree_caps() -> None:
    quotas = [
        Quota("a", nominal=cpus(2), borrowing_limit=cpus(6), cohort="org/research"),
        Quota("b", nominal=cpus(2), cohort="org/research"),
        Quota("c", nominal=cpus(4), cohort="org/prod"),
    ]
    t = jobs([(0, 100, 1, "a", 0)] * 8)
    # a borrows from b (same cohort) and from c (another branch of the same tree).
    assert usage_over_time(simulate(t, cluster(8), quotas=Quotas(quotas)), "a") == 8
    # research may use at most 2 CPUs beyond its own nominal quotas (2 + 2): a gets 6.
    capped = Quotas(quotas, cohort_limits={"org/research": cpus(2)})
    assert usage_over_time(simulate(t, cluster(8), quotas=capped), "a") == 6
    with pytest.raises(InputError, match="cohort"):
        Quotas(quotas, cohort_limits={"org/research": (1, 2)})  # type: ignore[dict-item]
