"""Trace replay: published RLScheduler tables, scheduling guarantees, determinism, faults."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cplat.model import GpuModels, NodeTable
from cplat.profile import POLICIES
from cplat.scheduler import QueuePolicy
from cplat.sim.rlsched import ORDERS, PUBLISHED, evaluate, sequence_starts
from cplat.sim.run import FaultModel, simulate
from cplat.traces.schema import JOB_SCHEMA
from cplat.traces.swf import read_swf
from cplat.workload import lublin_feitelson


def cluster(n: int, cpus: int = 1) -> NodeTable:
    return NodeTable(
        name=tuple(f"n{i}" for i in range(n)),
        cpu_milli=np.full(n, 1000 * cpus, dtype=np.int64),
        memory_mib=np.zeros(n, dtype=np.int64),
        num_gpu=np.zeros(n, dtype=np.int32),
        gpu_model=np.full(n, -1, dtype=np.int32),
        models=GpuModels(()),
    )


def jobs_table(
    submit: list[int], duration: list[int], width: list[int], group: str = "g"
) -> pa.Table:
    n = len(submit)
    return pa.table(
        {
            "job_id": np.arange(1, n + 1, dtype=np.int64),
            "submit_time": np.asarray(submit, dtype=np.int64),
            "duration": np.asarray(duration, dtype=np.int64),
            "requested_time": np.asarray(duration, dtype=np.int64),
            "num_tasks": np.asarray(width, dtype=np.int32),
            "cpu_milli": np.full(n, 1000, dtype=np.int64),
            "memory_mib": np.zeros(n, dtype=np.int64),
            "num_gpu": np.zeros(n, dtype=np.int32),
            "gpu_milli": np.zeros(n, dtype=np.int32),
            "gpu_models": [""] * n,
            "user": ["u"] * n,
            "group": [group] * n,
            "priority": np.zeros(n, dtype=np.int32),
            "queue": ["q"] * n,
        },
        schema=JOB_SCHEMA,
    )


# --- the published RLScheduler tables ------------------------------------------------------


@pytest.fixture(scope="module")
def lublin(request: pytest.FixtureRequest) -> dict[str, object]:
    from conftest import TRACES

    folder = TRACES / "swf-lublin-synthetic"
    if not (folder / "lublin_256.swf.gz").is_file():
        pytest.skip(f"Lublin SWF logs not found in {folder} (../shared is absent)")
    return {stem: read_swf(folder / f"{stem}.swf.gz") for stem in ("lublin_256", "lublin_256_new2")}


def test_sequence_starts_match_the_published_evaluation() -> None:
    assert sequence_starts(10_000) == [1981, 2756, 4299, 8850, 3316, 2714, 5228, 7762, 4022, 7085]


@pytest.mark.parametrize("stem", ["lublin_256", "lublin_256_new2"])
@pytest.mark.parametrize("backfill", [False, True])
def test_rlscheduler_tables_within_5_percent(lublin, stem: str, backfill: bool) -> None:
    trace = lublin[stem]  # type: ignore[index]
    starts = sequence_starts(trace.jobs.num_rows)
    for order in ORDERS:
        results = evaluate(trace, order, backfill, starts)
        bsld = float(np.mean([r.bounded_slowdown for r in results]))
        util = float(np.mean([r.utilization for r in results]))
        paper_bsld, paper_util = PUBLISHED[(stem, backfill)][order]
        assert bsld == pytest.approx(paper_bsld, rel=0.05), (order, bsld, paper_bsld)
        assert util == pytest.approx(paper_util, rel=0.05), (order, util, paper_util)


# --- guarantees on random traces ---------------------------------------------------------


@st.composite
def small_traces(draw: st.DrawFn) -> tuple[int, int, pa.Table]:
    nodes = draw(st.integers(2, 8))
    cpus = draw(st.sampled_from([1, 2]))
    n = draw(st.integers(1, 30))
    submit = sorted(draw(st.lists(st.integers(0, 300), min_size=n, max_size=n)))
    duration = draw(st.lists(st.integers(1, 120), min_size=n, max_size=n))
    width = draw(st.lists(st.integers(1, nodes * cpus), min_size=n, max_size=n))
    return nodes, cpus, jobs_table(submit, duration, width)


def assert_capacity_never_exceeded(res, nodes: NodeTable) -> None:
    usage = np.zeros(len(nodes), dtype=np.int64)
    events = []
    placed = res.jobs.column("nodes").to_pylist()
    for j in range(len(res.start)):
        events.append((int(res.end[j]), 0, j))  # releases first at equal times
        events.append((int(res.start[j]), 1, j))
    for _, kind, j in sorted(events):
        for node in placed[j]:
            usage[node] += 1000 if kind == 1 else -1000
        assert np.all(usage <= nodes.cpu_milli) and np.all(usage >= 0)


@settings(max_examples=40, deadline=None)
@given(small_traces(), st.sampled_from(["none", "easy", "conservative", "rlsched"]))
def test_guarantees_fcfs(trace: tuple[int, int, pa.Table], backfill: str) -> None:
    n_nodes, cpus, jobs = trace
    nodes = cluster(n_nodes, cpus)
    res = simulate(jobs, nodes, queue=QueuePolicy("fcfs", backfill))
    # Every job ends exactly once, after it starts, and never starts before it is submitted.
    assert res.jobs.column("status").to_pylist() == ["completed"] * jobs.num_rows
    assert np.array_equal(res.end - res.start, res.columns.duration)
    assert np.all(res.start >= res.columns.submit)
    assert_capacity_never_exceeded(res, nodes)
    # Exact estimates: reservations are never delayed (EASY: the head's; conservative: all).
    reserved = res.reservation >= 0
    assert np.all(res.start[reserved] <= res.reservation[reserved])
    if backfill == "none":
        # Plain FCFS never lets a later job overtake an earlier one.
        order = np.lexsort((res.columns.job_id, res.columns.submit))
        assert np.all(np.diff(res.start[order]) >= 0)


@settings(max_examples=25, deadline=None)
@given(small_traces(), st.sampled_from(["sjf", "f1", "wfp3", "unicep", "priority"]))
def test_other_orders_complete_and_respect_capacity(trace, order: str) -> None:
    n_nodes, cpus, jobs = trace
    nodes = cluster(n_nodes, cpus)
    res = simulate(jobs, nodes, queue=QueuePolicy(order, "easy"))
    assert np.all(res.end >= 0)
    assert_capacity_never_exceeded(res, nodes)


def test_job_larger_than_cluster_never_starts_and_says_why() -> None:
    jobs = jobs_table([0, 0], [10, 10], [2, 9])
    res = simulate(jobs, cluster(4))
    assert res.jobs.column("status").to_pylist() == ["completed", "never_started"]


def test_horizon_reports_unfinished_jobs() -> None:
    jobs = jobs_table([0, 0, 50], [100, 10, 10], [4, 1, 1])
    res = simulate(jobs, cluster(4), horizon=60)
    assert res.jobs.column("status").to_pylist() == ["unfinished", "never_started", "never_started"]


# --- determinism and faults ----------------------------------------------------------------


def test_same_seed_same_decision_log_with_faults() -> None:
    jobs = lublin_feitelson(1500, nodes=64, seed=3)
    nodes = cluster(64)
    faults = FaultModel(mtbf=2e6, mttr=3600, seed=9)
    a = simulate(jobs, nodes, queue=QueuePolicy("fcfs", "easy"), faults=faults, record_log=True)
    b = simulate(jobs, nodes, queue=QueuePolicy("fcfs", "easy"), faults=faults, record_log=True)
    assert "\n".join(a.log).encode() == "\n".join(b.log).encode()
    assert a.node_failures > 0
    assert int(np.asarray(a.jobs.column("restarts")).sum()) > 0
    c = simulate(
        jobs, nodes, queue=QueuePolicy("fcfs", "easy"),
        faults=FaultModel(mtbf=2e6, mttr=3600, seed=10), record_log=True,
    )  # fmt: skip
    assert a.log != c.log
    # Every job still completes once, and nothing starts on a node while it is down.
    assert np.all(a.end >= 0)
    down: dict[int, bool] = {}
    for line in a.log:
        t, kind, *rest = line.split("\t")
        if kind == "node_down":
            down[int(rest[0])] = True
        elif kind == "node_up":
            down[int(rest[0])] = False
        elif kind == "start":
            assert not any(down.get(int(x), False) for x in rest[1].split(",") if x)


def test_fgd_placement_in_replay_uses_the_trace_shapes() -> None:
    jobs = jobs_table([0, 1, 2], [10, 10, 10], [1, 1, 1])
    res = simulate(jobs, cluster(2), placement=POLICIES["fgd"])
    assert np.all(res.end >= 0)


# --- command line -----------------------------------------------------------------------------


def test_cli_default_run_writes_outputs(tmp_path: Path) -> None:
    from cplat.cli.main import main

    out = tmp_path / "o"
    assert (
        main(["sim", "--synthetic-jobs", "400", "--synthetic-nodes", "32", "--out", str(out)]) == 0
    )
    assert (out / "summary.json").is_file() and (out / "wait_cdf.png").is_file()
    assert (out / "fcfs_easy" / "jobs.parquet").is_file()


def test_cli_bad_swf_line_strict_and_lenient(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cplat.cli.main import main

    swf = tmp_path / "bad.swf"
    good = "1 0 -1 10 2 -1 -1 2 -1 -1 1 1 1 -1 0 -1 -1 -1"
    swf.write_text(
        "; MaxNodes: 4\n; MaxProcs: 4\n" + good + "\n2 5 -1 x 1 -1 -1 1 -1 -1 1 1 1 -1 0 -1 -1 -1\n"
    )
    assert (
        main(
            ["sim", "--trace", f"swf:{swf}", "--policy", "fcfs", "--strict", "--out", str(tmp_path)]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert f"{swf}:4" in err and "run_time" in err and "Traceback" not in err
    assert (
        main(["sim", "--trace", f"swf:{swf}", "--policy", "fcfs", "--out", str(tmp_path / "o")])
        == 0
    )
    assert "skipped 1 rows" in capsys.readouterr().out.replace("\n", " ")
    assert main(["sim", "--policy", "lifo", "--synthetic-jobs", "10"]) == 2
    assert "unknown queue order 'lifo'" in capsys.readouterr().err


def test_periodic_ticks_delay_starts_to_tick_times() -> None:
    jobs = jobs_table([5, 7, 61], [10, 10, 10], [1, 1, 1])
    res = simulate(jobs, cluster(4), tick=30)
    assert res.start.tolist() == [30, 30, 90]
    assert np.all(res.start % 30 == 0)


def test_gpu_replay_records_allocation_and_fragmentation() -> None:
    from cplat.pack.synthetic import synthetic_cluster

    nodes = synthetic_cluster(4, seed=0, gpus_per_node=2)
    jobs = jobs_table([0, 0, 1], [50, 50, 50], [1, 1, 1])
    jobs = jobs.set_column(7, "num_gpu", pa.array([1, 1, 2], pa.int32()))
    jobs = jobs.set_column(8, "gpu_milli", pa.array([500, 1000, 1000], pa.int32()))
    res = simulate(jobs, nodes, placement=POLICIES["fgd"])
    series = res.gpu_series
    assert series.shape[1] == 3 and len(series) >= 2
    assert series[:, 1].max() == 3500  # all three jobs ran at once
    assert np.all(series[:, 2] <= nodes.total_gpu_milli - series[:, 1] + 1e-6)


# --- report: plots, table, the shared-utilization note -----------------------------------------


def _runs(jobs: pa.Table, nodes: NodeTable, orders: list[str]):  # type: ignore[no-untyped-def]
    from cplat.sim.report import Run

    return [
        Run(o, simulate(jobs, nodes, placement=POLICIES["bestfit"], queue=QueuePolicy(o)), 0.1)
        for o in orders
    ]


def test_plots_have_titles_naming_the_trace_and_a_panel_row_per_run(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    from cplat.sim.report import plot_runs, run_figures

    runs = _runs(lublin_feitelson(200, nodes=16, seed=1), cluster(16), ["fcfs", "sjf", "f1"])
    figures = run_figures(runs, trace="tiny-trace.swf")
    util = figures["utilization_queue.png"]
    assert "tiny-trace.swf" in util.get_suptitle() and "utilization" in util.get_suptitle()
    assert len(util.axes) == 2 * len(runs)  # small multiples: utilization | queue per run
    assert [ax.get_title(loc="left") for ax in util.axes[::2]] == ["fcfs", "sjf", "f1"]
    lows = {ax.get_ylim() for ax in util.axes[::2]}
    assert len(lows) == 1  # every utilization panel on the same scale
    (cdf_ax,) = figures["wait_cdf.png"].axes
    assert "tiny-trace.swf" in cdf_ax.get_title() and len(cdf_ax.get_lines()) == len(runs)
    for fig in figures.values():
        plt.close(fig)
    paths = plot_runs(runs, tmp_path, trace="tiny-trace.swf")
    assert {p.name for p in paths} == {"utilization_queue.png", "wait_cdf.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_equal_utilization_is_explained_when_the_last_job_sets_the_makespan() -> None:
    from cplat.sim.report import compare_table, summarize, util_note

    # Four jobs contend on one node early; the last arrives at t=100 to an idle node and runs
    # at once, so every order ends at 105 with the same work done: the same utilization.
    jobs = jobs_table([0, 1, 2, 100], [30, 20, 10, 5], [1, 1, 1, 1])
    summaries = [summarize(r) for r in _runs(jobs, cluster(1), ["fcfs", "sjf"])]
    assert summaries[0]["mean_wait"] != summaries[1]["mean_wait"]
    assert summaries[0]["mean_utilization"] == summaries[1]["mean_utilization"]
    note = util_note(summaries)
    assert note is not None and "every policy" in note and "makespan" in note
    assert note in str(compare_table(summaries, "t").caption)
    # A run that ends later does not share the figure: no note for one policy alone.
    late = dict(summaries[1], policy="late", mean_utilization=0.1, makespan=999)
    assert util_note([summaries[0], late]) is None
    shared = util_note([summaries[0], summaries[1], late])
    assert shared is not None and "2 of 3 policies" in shared


def test_cli_prints_the_trace_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cplat.cli.main import main

    args = ["sim", "--synthetic-jobs", "300", "--synthetic-nodes", "16", "--compare", "fcfs,sjf"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("synthetic Lublin-Feitelson: 300 jobs on 16 nodes") == 1
    assert "span" in out and "util:" in out


# --- the replay's parts: the finished-jobs count, coincident events ---------------------------


def test_progress_counts_finished_jobs_after_an_elastic_resize() -> None:
    # Job 0 holds one of two nodes until 9998; elastic job 1 starts on the other and grows to
    # both then, banking 9998 s x 1/2 = 4999 s of work. That banked work must not be taken for
    # a count of finished jobs (it was, and progress then reported 5000 of 2 jobs done).
    t = jobs_table([0, 0], [9998, 20000], [1, 2])
    calls: list[tuple[int, int]] = []
    res = simulate(
        t,
        cluster(2),
        elastic_min=np.array([1, 1]),
        record_log=True,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert "9998\tresize\t2\t2 tasks" in res.log
    assert res.end.tolist() == [9998, 9998 + (20000 - 4999)]
    assert all(done <= total for done, total in calls), calls
    assert calls[-1] == (2, 2)


def test_progress_is_reported_every_5000_finished_jobs_and_at_the_end() -> None:
    n = 10_001
    t = jobs_table(list(range(n)), [1] * n, [1] * n)
    calls: list[tuple[int, int]] = []
    simulate(t, cluster(1), progress=lambda done, total: calls.append((done, total)))
    assert calls == [(5000, n), (10_000, n), (n, n)]


def test_a_job_that_finishes_as_its_grace_period_ends_is_not_requeued() -> None:
    # The victim's own end (0 + 760) and its grace end (700 + 60) fall on one instant: it
    # finished. (It was requeued too and ran a second time, 810..1570.)
    t = jobs_table([0, 700], [760, 50], [8, 8])
    t = t.set_column(
        t.schema.get_field_index("priority"),
        t.schema.field("priority"),
        pa.array([0, 5], type=pa.int32()),
    )
    q = QueuePolicy("priority", preemption="priority", grace_period=60)
    res = simulate(t, cluster(8), queue=q, record_log=True)
    assert res.start.tolist() == [0, 760] and res.end.tolist() == [760, 810]
    assert res.jobs.column("restarts").to_pylist() == [0, 0]
    assert not any("requeue" in line for line in res.log)


def test_a_job_that_finishes_as_its_node_fails_is_not_requeued() -> None:
    from cplat.sim.faults import NodeFaults

    # Find a seed whose first failure of node 0 falls at a time a one-node job can end at.
    model = FaultModel(mtbf=1000.0, mttr=10.0, seed=0)
    first = dict((node, t) for t, node in NodeFaults(model, 1).first_failures())[0]
    t = jobs_table([0], [first], [1])
    res = simulate(t, cluster(1), faults=model, record_log=True)
    assert res.end.tolist() == [first] and res.start.tolist() == [0]
    assert res.jobs.column("restarts").to_pylist() == [0]
    assert f"{first}\tfinish\t1" in res.log
