"""Queue-sort plugins: multifactor priority, fair share, DRF (factors, decay, end to end)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from cplat import metrics
from cplat.cli.main import main
from cplat.errors import InputError
from cplat.model import GpuModels, NodeTable
from cplat.policy.fairshare import (
    DRF,
    FairShare,
    MultifactorPriority,
    make_queue_sort,
    parse_queue_sort_spec,
)
from cplat.scheduler import QueuePolicy, job_columns
from cplat.sim.run import SimResult, simulate
from cplat.traces.schema import JOB_SCHEMA


def cluster(n: int, cpu: int = 1000, mem: int = 0, gpus: int = 0) -> NodeTable:
    models = GpuModels(("V100",) if gpus else ())
    return NodeTable(
        name=tuple(f"n{i}" for i in range(n)),
        cpu_milli=np.full(n, cpu, dtype=np.int64),
        memory_mib=np.full(n, mem, dtype=np.int64),
        num_gpu=np.full(n, gpus, dtype=np.int32),
        gpu_model=np.full(n, 0 if gpus else -1, dtype=np.int32),
        models=models,
    )


def jobs(
    submit: list[int],
    duration: list[int],
    group: list[str],
    *,
    user: list[str] | None = None,
    cpu: list[int] | None = None,
    mem: list[int] | None = None,
    queue: list[str] | None = None,
    num_gpu: list[int] | None = None,
) -> pa.Table:
    n = len(submit)
    return pa.table(
        {
            "job_id": np.arange(1, n + 1, dtype=np.int64),
            "submit_time": np.asarray(submit, dtype=np.int64),
            "duration": np.asarray(duration, dtype=np.int64),
            "requested_time": np.asarray(duration, dtype=np.int64),
            "num_tasks": np.ones(n, dtype=np.int32),
            "cpu_milli": np.asarray(cpu or [1000] * n, dtype=np.int64),
            "memory_mib": np.asarray(mem or [0] * n, dtype=np.int64),
            "num_gpu": np.asarray(num_gpu or [0] * n, dtype=np.int32),
            "gpu_milli": np.asarray([1000 if g else 0 for g in (num_gpu or [0] * n)], np.int32),
            "gpu_models": [""] * n,
            "user": user or ["u"] * n,
            "group": group,
            "priority": np.zeros(n, dtype=np.int32),
            "queue": queue or ["q"] * n,
        },
        schema=JOB_SCHEMA,
    )


def registered(plugin: FairShare | MultifactorPriority | DRF, table: pa.Table, nodes: NodeTable):
    cols = job_columns(table, nodes.models)
    idx = np.arange(len(cols), dtype=np.int32)
    plugin.add_jobs(cols, idx)
    return idx


def ix(*jobs: int) -> np.ndarray:
    return np.asarray(jobs, dtype=np.int32)


# --- hand-computed factors ------------------------------------------------------------------


def test_fairshare_factor_by_hand() -> None:
    nodes = cluster(2)  # 2000 milli-CPU: a 1000-milli job has rate 0.5
    plugin = FairShare(nodes, half_life=0)
    registered(plugin, jobs([0, 0, 0], [100] * 3, ["A", "B", "A"]), nodes)
    assert plugin.priorities(ix(1, 2), 0) == pytest.approx([1.0, 1.0])  # nobody used anything
    plugin.on_start(ix(0), 0)
    plugin.on_finish(ix(0), 100)
    assert plugin.account_usage.tolist() == pytest.approx([50.0, 0.0])  # 0.5 * 100 s
    # A has all the usage and half the shares: F = 2 ** (-1 / 0.5) = 0.25; B: 2 ** 0 = 1.
    assert plugin.account_fairshare() == pytest.approx([0.25, 1.0])
    p = plugin.priorities(ix(1, 2), 100)
    assert p[0] == pytest.approx(1.0, abs=1e-5)
    assert p[1] == pytest.approx(0.25, abs=1e-5)


def test_user_effective_usage_inherits_the_account() -> None:
    nodes = cluster(2)
    plugin = FairShare(nodes, half_life=0)
    table = jobs([0] * 3, [100] * 3, ["A", "A", "B"], user=["a1", "a2", "b1"])
    registered(plugin, table, nodes)
    plugin.on_start(ix(0), 0)
    plugin.on_finish(ix(0), 100)
    # a1: U = 1, U_eff = 1 + (1 - 1) / 2 = 1, S = 0.25 -> 2 ** -4; a2: U_eff = 0 + (1 - 0) / 2,
    # S = 0.25 -> 2 ** -2; b1 (no usage in an unused account): 1.
    assert plugin.user_fairshare() == pytest.approx([2.0**-4, 2.0**-2, 1.0])


def test_configured_shares() -> None:
    nodes = cluster(2)
    plugin = FairShare(nodes, half_life=0, shares={"A": 3.0, "B": 1.0})
    registered(plugin, jobs([0, 0], [100, 100], ["A", "B"]), nodes)
    plugin.on_start(ix(0, 1), 0)
    plugin.on_finish(ix(0, 1), 10)
    # Equal usage (0.5 each), shares 0.75 / 0.25: F = 2 ** (-0.5 / 0.75), 2 ** (-0.5 / 0.25).
    assert plugin.account_fairshare() == pytest.approx([2 ** (-2 / 3), 0.25])


def test_multifactor_by_hand() -> None:
    nodes = cluster(2)
    plugin = MultifactorPriority(
        nodes,
        queues={1: "hi", 2: "lo"},
        max_age=100,
        w_age=1,
        w_fairshare=1,
        w_size=1,
        w_qos=1,
        favor="small",
        qos={"hi": 1.0},
        qos_default=0.25,
    )
    registered(plugin, jobs([0, 30], [10, 10], ["A", "A"], cpu=[1000, 500]), nodes)
    f = plugin.factors(ix(0, 1), 50)
    assert f["age"] == pytest.approx([0.5, 0.2])
    assert f["fairshare"] == pytest.approx([1.0, 1.0])
    assert f["size"] == pytest.approx([0.5, 0.75])  # 1 - share of the cluster
    assert f["qos"] == pytest.approx([1.0, 0.25])
    assert plugin.priorities(ix(0, 1), 50) == pytest.approx([3.0, 2.2])
    large = MultifactorPriority(nodes, favor="large", w_age=0, w_fairshare=0, w_qos=0, w_size=2)
    registered(large, jobs([0, 30], [10, 10], ["A", "A"], cpu=[1000, 500]), nodes)
    assert large.priorities(ix(0, 1), 50) == pytest.approx([1.0, 0.5])
    assert large.factors(ix(0), 10**9)["age"] == pytest.approx([1.0])  # saturates


def test_resource_weights_ignore_missing_resources() -> None:
    nodes = cluster(4, cpu=1000, mem=1000)  # no GPUs: GPU demand does not count
    plugin = FairShare(nodes, resource_weights={"cpu": 1, "memory": 1, "gpu": 5})
    cols = jobs([0], [10], ["A"], cpu=[2000], mem=[1000])
    registered(plugin, cols, nodes)
    assert plugin.rate.tolist() == pytest.approx([(0.5 + 0.25) / 2])


# --- decay ----------------------------------------------------------------------------------


def test_half_life_decay_integrates_exactly() -> None:
    nodes = cluster(2)
    plugin = FairShare(nodes, half_life=100)
    registered(plugin, jobs([0, 0], [100, 100], ["A", "B"]), nodes)
    plugin.on_start(ix(0), 0)
    plugin.priorities(ix(1), 37)  # asking in between does not change the integral
    plugin.on_finish(ix(0), 100)
    # dU/dt = 0.5 - ln2/100 U from 0: U(100) = 0.5 * (1 - 2**-1) * 100 / ln 2.
    expect = 0.5 * 0.5 * 100 / math.log(2)
    assert plugin.account_usage[0] == pytest.approx(expect)
    plugin.priorities(ix(1), 300)  # two more half-lives without running
    assert plugin.account_usage[0] == pytest.approx(expect / 4)


def test_old_usage_counts_less_than_recent_usage() -> None:
    nodes = cluster(2)
    plugin = FairShare(nodes, half_life=100)
    registered(plugin, jobs([0, 0, 0, 0], [1] * 4, ["A", "B", "A", "B"]), nodes)
    plugin.on_start(ix(0), 0)  # A uses twice as much as B, but long ago
    plugin.on_finish(ix(0), 100)
    plugin.on_start(ix(1), 500)
    plugin.on_finish(ix(1), 550)
    p = plugin.priorities(ix(2, 3), 550)
    assert p[0] > p[1]
    no_decay = FairShare(nodes, half_life=0)
    registered(no_decay, jobs([0, 0, 0, 0], [1] * 4, ["A", "B", "A", "B"]), nodes)
    no_decay.on_start(ix(0), 0)
    no_decay.on_finish(ix(0), 100)
    no_decay.on_start(ix(1), 500)
    no_decay.on_finish(ix(1), 550)
    p = no_decay.priorities(ix(2, 3), 550)
    assert p[0] < p[1]


def test_group_that_used_more_gets_lower_priority() -> None:
    nodes = cluster(4)
    for name in ("fairshare", "multifactor"):
        plugin = make_queue_sort(name, nodes, options={"half_life": 3600})
        cols = jobs([0] * 6, [10] * 6, ["A", "A", "A", "B", "A", "B"])
        plugin.add_jobs(job_columns(cols, nodes.models), np.arange(6, dtype=np.int32))
        plugin.on_start(ix(0, 1, 2, 3), 0)
        p = plugin.priorities(ix(4, 5), 100)
        assert p[1] > p[0], name


def test_finish_of_a_job_not_running_is_ignored() -> None:
    nodes = cluster(2)
    plugin = FairShare(nodes, half_life=0)
    registered(plugin, jobs([0, 0], [1, 1], ["A", "B"]), nodes)
    plugin.on_finish(ix(0, 1), 5)
    plugin.on_start(ix(0), 10)
    plugin.on_finish(ix(0, 0), 20)  # twice in one call
    plugin.on_finish(ix(0), 30)
    assert plugin.account_rate.tolist() == [0.0, 0.0]
    assert plugin.account_usage.tolist() == pytest.approx([5.0, 0.0])


# --- DRF ------------------------------------------------------------------------------------


def test_drf_prefers_the_lowest_dominant_share() -> None:
    nodes = cluster(2, cpu=1000, mem=1000)  # 2000 milli-CPU, 2000 MiB
    table = jobs(
        [0] * 5,
        [10] * 5,
        ["A", "B", "A", "B", "C"],
        cpu=[1000, 200, 100, 100, 1000],
        mem=[100, 1200, 100, 100, 0],
    )
    plugin = DRF(nodes, tie=0.0)
    registered(plugin, table, nodes)
    plugin.on_start(ix(0, 1), 0)  # A holds 50% CPU, B 60% memory
    p = plugin.priorities(ix(2, 3, 4), 5)
    # A: max(1100, 200) / 2000; B: max(300, 1300) / 2000; C: max(1000, 0) / 2000.
    assert p == pytest.approx([-0.55, -0.65, -0.5])
    assert int(np.argmax(p)) == 2
    plugin.on_finish(ix(1), 6)
    assert plugin.priorities(ix(3), 6) == pytest.approx([-0.05])


def test_drf_ignores_resources_the_cluster_lacks() -> None:
    nodes = cluster(2, cpu=1000, mem=0)
    plugin = DRF(nodes, tie=0.0)
    registered(plugin, jobs([0], [1], ["A"], cpu=[500], mem=[700]), nodes)
    assert plugin.priorities(ix(0), 0) == pytest.approx([-0.25])


def test_drf_with_gpus() -> None:
    nodes = cluster(2, cpu=10_000, mem=0, gpus=4)  # 8 GPUs
    table = jobs([0] * 3, [1] * 3, ["A", "B", "A"], cpu=[1000] * 3, num_gpu=[4, 0, 1])
    plugin = DRF(nodes, tie=0.0)
    registered(plugin, table, nodes)
    plugin.on_start(ix(0), 0)
    assert plugin.priorities(ix(1, 2), 0) == pytest.approx([-0.05, -5 / 8])


# --- factory and CLI ------------------------------------------------------------------------


def test_factory_names_and_options() -> None:
    nodes = cluster(2)
    assert isinstance(make_queue_sort("multifactor", nodes), MultifactorPriority)
    assert isinstance(make_queue_sort("fairshare", nodes), FairShare)
    assert isinstance(make_queue_sort("drf", nodes), DRF)
    with pytest.raises(InputError, match="multifactor, fairshare, drf") as exc:
        make_queue_sort("lottery", nodes)
    assert exc.value.field == "queue_sort"
    bad: list[tuple[str, dict[str, object], str]] = [
        ("fairshare", {"half_lfe": 3}, "half_lfe"),
        ("fairshare", {"half_life": -1}, "half_life"),
        ("fairshare", {"max_age": 0}, "max_age"),
        ("fairshare", {"account": "team"}, "account"),
        ("fairshare", {"shares": {"A": 0}}, "shares"),
        ("fairshare", {"resource_weights": {"disk": 1}}, "resource_weights.disk"),
        ("fairshare", {"resource_weights": {"cpu": 0, "gpu": 0}}, "resource_weights"),
        ("multifactor", {"favor": "medium"}, "favor"),
        ("multifactor", {"qos": {"LS": 2}}, "qos"),
        ("multifactor", {"w_age": "1"}, "w_age"),
        ("drf", {"half_life": 10}, "half_life"),
    ]
    for name, options, field in bad:
        with pytest.raises(InputError) as err:
            make_queue_sort(name, nodes, options=options)
        assert err.value.field == field, (name, options)


def test_parse_spec() -> None:
    assert parse_queue_sort_spec("drf") == ("drf", {})
    assert parse_queue_sort_spec("multifactor:account=queue,w_qos=2,qos.LS=1,max_age=1.5") == (
        "multifactor",
        {"account": "queue", "w_qos": 2, "qos": {"LS": 1}, "max_age": 1.5},
    )
    with pytest.raises(InputError):
        parse_queue_sort_spec("fairshare:half_life")


def test_account_from_queue_column() -> None:
    nodes = cluster(2)
    table = jobs([0, 0, 0], [1] * 3, ["", "", ""], queue=["LS", "BE", "LS"])
    plugin = make_queue_sort("fairshare", nodes, table, {"account": "queue", "half_life": 0})
    plugin.add_jobs(job_columns(table, nodes.models), np.arange(3, dtype=np.int32))
    plugin.on_start(ix(0), 0)
    plugin.on_finish(ix(0), 10)
    p = plugin.priorities(ix(1, 2), 10)
    assert p[0] > p[1]  # BE has not used anything


def test_cli_queue_sort(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["sim", "--synthetic-jobs", "300", "--synthetic-nodes", "32", "--out", str(tmp_path)]
    assert main([*args, "--queue-sort", "fairshare:half_life=3600"]) == 0
    assert "fairshare" in capsys.readouterr().out
    assert (tmp_path / "summary.json").is_file()
    assert main([*args, "--queue-sort", "lottery"]) == 2
    assert "valid: multifactor, fairshare, drf" in capsys.readouterr().err
    assert main([*args, "--queue-sort", "drf:half_life=5"]) == 2


# --- end to end -----------------------------------------------------------------------------


def tenants() -> pa.Table:
    """Tenant A floods the queue with long jobs first; B and C come a little later."""
    rng = np.random.default_rng(7)
    submit: list[int] = [0] * 40
    duration: list[int] = [400] * 40
    group: list[str] = ["A"] * 40
    for g, first in (("B", 30), ("C", 60)):
        t = first + np.cumsum(rng.integers(20, 80, size=20))
        submit += t.tolist()
        duration += rng.integers(50, 200, size=20).tolist()
        group += [g] * 20
    order = np.argsort(submit, kind="stable")
    return jobs([submit[i] for i in order], [duration[i] for i in order], [group[i] for i in order])


def group_slowdown_jain(r: SimResult) -> tuple[float, dict[str, float]]:
    done = r.end >= 0
    slow = metrics.bounded_slowdown(r.columns.submit[done], r.start[done], r.end[done])
    groups = np.asarray(r.columns.group, dtype=object)[done]
    per = metrics.group_breakdown(groups, slow, "mean")
    return metrics.jain_index(list(per.values())), per


def test_fair_share_raises_jain_index_over_fcfs() -> None:
    table, nodes = tenants(), cluster(8)
    fcfs = simulate(table, nodes, queue=QueuePolicy("fcfs"))
    base, per_fcfs = group_slowdown_jain(fcfs)
    assert per_fcfs["B"] > 3 * per_fcfs["A"]  # the burst makes the others wait
    prio = QueuePolicy("priority")
    for name in ("fairshare", "multifactor", "drf"):
        plugin = make_queue_sort(name, nodes, table, {} if name == "drf" else {"half_life": 600})
        r = simulate(table, nodes, queue=prio, queue_sort=plugin)
        assert (r.end >= 0).all()
        jain, per = group_slowdown_jain(r)
        assert jain > base + 0.05, (name, jain, base)
        assert per["B"] < per_fcfs["B"] and per["C"] < per_fcfs["C"]


def test_deterministic() -> None:
    table, nodes = tenants(), cluster(8)
    runs = [
        simulate(
            table,
            nodes,
            queue=QueuePolicy("priority", "easy"),
            queue_sort=make_queue_sort("multifactor", nodes, table, {"w_size": 0.5}),
            record_log=True,
        )
        for _ in range(2)
    ]
    assert runs[0].log == runs[1].log
    assert np.array_equal(runs[0].start, runs[1].start)


def test_drf_progressive_filling_interleaves_accounts() -> None:
    nodes = cluster(10)  # 10 000 milli-CPU
    table = jobs([0, 1, 2, 3, 3], [1] * 5, ["A", "A", "A", "B", "B"], cpu=[1000] * 5)
    plugin = DRF(nodes, tie=0.0)
    registered(plugin, table, nodes)
    p = plugin.priorities(ix(4, 2, 0, 3, 1), 10)  # any order in, shares follow age per account
    assert p == pytest.approx([-0.2, -0.3, -0.1, -0.1, -0.2])
    plugin.on_start(ix(3), 10)
    assert plugin.priorities(ix(0, 4), 10) == pytest.approx([-0.1, -0.2])
