"""The simulator's reports do not lie: infeasible jobs, started / never started, the profile."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import TRACES

from cplat.cli.main import main
from cplat.errors import InputError
from cplat.model import GpuModels, NodeTable
from cplat.scheduler import QueuePolicy
from cplat.sim.report import Run, compare_table, summarize, unstarted_warning
from cplat.sim.run import simulate
from cplat.traces.feasible import screen_jobs
from cplat.traces.schema import JOB_SCHEMA
from cplat.traces.trace import ReadReport, Trace


def nodes(cpus: list[int], gpus: list[int] | None = None, models: list[str] | None = None):
    n = len(cpus)
    gpus = gpus or [0] * n
    names = tuple(sorted({m for m in models or [] if m}))
    gm = GpuModels(names)
    return NodeTable(
        name=tuple(f"n{i}" for i in range(n)),
        cpu_milli=np.asarray([1000 * c for c in cpus], dtype=np.int64),
        memory_mib=np.full(n, 1024, dtype=np.int64),
        num_gpu=np.asarray(gpus, dtype=np.int32),
        gpu_model=np.asarray(
            [gm.index(m) if m else -1 for m in (models or [""] * n)], dtype=np.int32
        ),
        models=gm,
    )


def jobs(rows: list[dict[str, object]]) -> pa.Table:
    base: dict[str, object] = {
        "submit_time": 0,
        "duration": 100,
        "requested_time": 100,
        "num_tasks": 1,
        "cpu_milli": 1000,
        "memory_mib": 0,
        "num_gpu": 0,
        "gpu_milli": 0,
        "gpu_models": "",
        "user": "u",
        "group": "g",
        "priority": 0,
        "queue": "",
    }
    filled = [{"job_id": i, **base, **r} for i, r in enumerate(rows)]
    return pa.Table.from_pylist(filled, schema=JOB_SCHEMA)


def trace_of(table: pa.Table, fields_: dict[str, str] | None = None) -> Trace:
    n = table.num_rows
    return Trace(
        jobs=table,
        nodes=None,
        report=ReadReport("t.csv", n, n),
        lines=np.arange(2, n + 2, dtype=np.int64),
        fields=fields_ or {},
    )


# --- the screen: each way a job can never run -----------------------------------------------


@pytest.mark.parametrize(
    ("job", "reason", "field", "fragment"),
    [
        ({"num_tasks": 9}, "wider than the cluster", "num_tasks", "holds at most 8 such"),
        ({"cpu_milli": 4000}, "task larger than any node (CPU)", "cpu_milli", "largest node has 2"),
        ({"memory_mib": 4096}, "task larger than any node (memory)", "memory_mib", "1,024 MiB"),
        ({"num_gpu": 1, "gpu_milli": 1000}, "no GPUs in the cluster", "num_gpu", "has none"),
    ],
)
def test_cpu_cluster_rejects_what_it_can_never_run(
    job: dict[str, object], reason: str, field: str, fragment: str
) -> None:
    cluster = nodes([2, 2, 2, 2])  # 8 CPUs in all
    table = jobs([{"num_tasks": 8}, job, {"num_tasks": 2, "cpu_milli": 2000}])
    screened = screen_jobs(trace_of(table), cluster)
    assert screened.jobs.column("job_id").to_pylist() == [0, 2]
    assert screened.report.skipped == {f"infeasible: {reason}": 1}
    assert screened.report.rows_kept == 2 and screened.meta["infeasible_jobs"] == 1
    assert screened.lines is not None and screened.lines.tolist() == [2, 4]
    assert any(f"t.csv:3: column '{field}': job 1 " in e for e in screened.report.examples)
    with pytest.raises(InputError) as info:
        screen_jobs(trace_of(table), cluster, strict=True)
    assert (info.value.source, info.value.row, info.value.field) == ("t.csv", 3, field)
    assert fragment in info.value.message


def test_gpu_cluster_rules_models_shares_and_combinations() -> None:
    cluster = nodes([4, 64], gpus=[8, 0], models=["A100", ""])
    table = jobs(
        [
            {"num_gpu": 8, "gpu_milli": 1000, "cpu_milli": 4000},  # fits node 0 exactly
            {"num_gpu": 9, "gpu_milli": 1000, "cpu_milli": 0},  # more GPUs than any node
            {"num_gpu": 1, "gpu_milli": 1000, "gpu_models": "H100"},  # model missing
            {"num_gpu": 1, "gpu_milli": 1000, "gpu_models": "H100|A100"},  # runs on A100
            {"num_gpu": 1, "gpu_milli": 1000, "cpu_milli": 8000},  # CPU node lacks GPUs
            {"num_tasks": 16, "num_gpu": 1, "gpu_milli": 500, "cpu_milli": 0},  # 8 GPUs x 2
            {"num_tasks": 17, "num_gpu": 1, "gpu_milli": 500, "cpu_milli": 0},
        ]
    )
    screened = screen_jobs(trace_of(table, {"num_gpu": "num_gpus"}), cluster)
    assert screened.jobs.column("job_id").to_pylist() == [0, 3, 5]
    assert screened.report.skipped == {
        "infeasible: task larger than any node (GPUs)": 1,
        "infeasible: GPU model not in the cluster": 1,
        "infeasible: no node holds one task": 1,
        "infeasible: wider than the cluster": 1,
    }
    assert screened.jobs.column("gpu_models").to_pylist()[1] == "A100"
    assert any("column 'num_gpus': job 1 " in e for e in screened.report.examples)


def test_dimensions_the_cluster_does_not_give_are_not_checked() -> None:
    cluster = nodes([0, 0], gpus=[8, 8], models=["24G", "24G"])  # a Philly machine list
    table = jobs([{"cpu_milli": 4000, "num_gpu": 2, "gpu_milli": 1000}])
    screened = screen_jobs(trace_of(table), cluster)
    assert screened.jobs.num_rows == 1 and screened.jobs.column("cpu_milli").to_pylist() == [0]
    assert any("no CPU sizes" in w for w in screened.report.warnings)
    # The replay then runs the job rather than holding it forever.
    assert simulate(screened.jobs, cluster).start.tolist() == [0]


def test_feasible_trace_is_returned_unchanged() -> None:
    trace = trace_of(jobs([{"num_tasks": 4}]))
    assert screen_jobs(trace, nodes([2, 2])) is trace


# --- started / never started in every table, summary and a warning ------------------------


def test_summary_table_and_warning_count_jobs_that_never_started() -> None:
    # Given straight to the simulator (no screen), a too-wide head blocks FCFS for ever.
    table = jobs([{"num_tasks": 9}, {"submit_time": 1}, {"submit_time": 2}])
    result = simulate(table, nodes([2, 2, 2, 2]), queue=QueuePolicy("fcfs"))
    run = Run("fcfs", result, 0.1)
    s = summarize(run)
    assert (s["jobs"], s["started"], s["never_started"], s["finished"]) == (3, 0, 3, 0)
    warning = unstarted_warning(run)
    assert warning is not None and "3 of 3 jobs never started" in warning
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(compare_table([s], title="t", left_out=2))
    text = console.export_text()
    assert "started" in text and "never" in text
    assert "2 jobs of the trace can never run on this cluster" in text
    ok = simulate(jobs([{}]), nodes([2]))
    assert unstarted_warning(Run("fcfs", ok, 0.1)) is None


def test_requeued_job_waiting_at_the_horizon_counts_as_started() -> None:
    from cplat.scheduler import Checkpointing

    table = jobs([{"duration": 1000, "num_tasks": 2}, {"submit_time": 10, "priority": 5}])
    q = QueuePolicy("priority", preemption="priority")
    result = simulate(table, nodes([1, 1]), queue=q, horizon=50, checkpoint=Checkpointing(0, 0))
    s = summarize(Run("p", result, 0.1))
    assert result.jobs.column("restarts").to_pylist()[0] == 1
    assert s["started"] == 2 and s["never_started"] == 0


PHILLY_JOBS = (
    "timestamp,duration,num_gpus,job_id\n"
    "2017-10-03 02:00:00,100,1,1\n"
    "2017-10-03 02:00:05,200,16,2\n"
    "2017-10-03 02:00:10,300,64,3\n"  # 8 tasks of 8: the cluster holds 2
    "2017-10-03 02:00:20,50,4,4\n"
)
MACHINES = "machineId, number of GPUs, single GPU mem\nm1,8,24G\nm2,8,24G\nm3,2,12G\nm4,2,12G\n"


def test_cli_trace_with_an_infeasible_job_warns_and_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "jobs.csv"
    trace.write_text(PHILLY_JOBS)
    machines = tmp_path / "cluster_machine_list"
    machines.write_text(MACHINES)
    out = tmp_path / "o"
    args = ["sim", "--trace", f"philly:{trace}", "--cluster", str(machines)]
    assert main([*args, "--compare", "fcfs,sjf", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "1 jobs can never run on this cluster and are left out" in captured.err
    assert "wider than the cluster 1" in captured.err
    assert "never" in captured.out and "can never run on this cluster" in captured.out
    summary = json.loads((out / "summary.json").read_text())
    assert [e["policy"] for e in summary] == ["fcfs", "sjf"]
    for entry in summary:
        # The 16-GPU job is a gang of two 8-GPU tasks and runs; the 64-GPU one is left out.
        assert (entry["jobs"], entry["started"], entry["never_started"]) == (3, 3, 0)
        assert entry["infeasible_jobs"] == 1
        assert entry["skipped_rows"] == {"infeasible: wider than the cluster": 1}
    # --strict: the same trace is an error naming the file, line and column.
    assert main([*args, "--strict", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cplat sim: error: {trace}:4: column 'num_gpus': job 3 asks for 8 ")


def test_cli_warns_when_a_run_leaves_jobs_unstarted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "jobs.csv"
    trace.write_text(PHILLY_JOBS)
    machines = tmp_path / "m.csv"
    machines.write_text(MACHINES)
    out = tmp_path / "o"
    args = ["sim", "--trace", f"philly:{trace}", "--cluster", f"philly:{machines}"]
    assert main([*args, "--policy", "fcfs", "--horizon", "3", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "cplat sim: warning: fcfs: 2 of 3 jobs never started" in err
    entry = json.loads((out / "summary.json").read_text())[0]
    assert (entry["started"], entry["never_started"]) == (1, 2)


def test_cli_reads_parquet_traces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    swf = tmp_path / "t.swf"
    swf.write_text(
        "; MaxNodes: 4\n; MaxProcs: 16\n"
        + "".join(f"{j} {j * 10} -1 100 {j} -1 -1 -1 -1 -1 1 7 -1 -1 2 -1 -1 -1\n" for j in (1, 2))
    )
    pq_path = tmp_path / "t.parquet"
    assert main(["trace", "convert", f"swf:{swf}", "--out", str(pq_path)]) == 0
    for spec in (f"swf:{swf}", f"parquet:{pq_path}"):
        out = tmp_path / spec.split(":")[0]
        assert main(["sim", "--trace", spec, "--policy", "fcfs", "--out", str(out)]) == 0
    a = json.loads((tmp_path / "swf" / "summary.json").read_text())[0]
    b = json.loads((tmp_path / "parquet" / "summary.json").read_text())[0]
    for key in ("jobs", "started", "finished", "mean_wait", "makespan"):
        assert a[key] == b[key]
    capsys.readouterr()


@pytest.mark.skipif(
    not (TRACES / "alibaba-gpu-v2025-dlrm").is_dir(),
    reason=f"DLRM and spot-GPU traces not found in {TRACES} (../shared is absent)",
)
def test_dlrm_on_the_spot_cluster_starts_jobs() -> None:
    # The spot-GPU node list has no memory sizes; the DLRM jobs all ask for memory. Checked
    # as given, no job could ever start.
    from cplat.traces.cluster import load_cluster
    from cplat.traces.load import load_trace

    cluster = load_cluster(str(TRACES / "alibaba-spot-gpu-v2026-nodes" / "node_info_df.csv"))
    trace = load_trace(
        "dlrm", TRACES / "alibaba-gpu-v2025-dlrm" / "disaggregated_DLRM_trace.csv.gz"
    )
    screened = screen_jobs(trace, cluster)
    assert any("no memory sizes" in w for w in screened.report.warnings)
    result = simulate(screened.jobs.slice(0, 300), cluster)
    assert int((result.start >= 0).sum()) > 0


# --- the profile reaches the simulator whole ------------------------------------------------


def test_profile_policy_reaches_the_simulator_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cplat.sim.run as sim_run
    from cplat.config import load_scheduler_config

    profile = tmp_path / "p.toml"
    profile.write_text(
        """
[queue]
order = "sjf"
backfill = "conservative"
preemption = "priority"
lock_head = true
max_backfill_jobs = 7
calendar_resolution = 60
calendar_horizon = 86400
random_victims = true
topology_aware = true
max_span = "rack"
grace_period = 30
"""
    )
    expected = load_scheduler_config(profile).queue
    # Every field the test sets differs from its default, so a dropped field shows.
    defaults = QueuePolicy()
    set_here = {"order", "backfill", "preemption", "lock_head", "max_backfill_jobs",
                "calendar_resolution", "calendar_horizon", "random_victims",
                "topology_aware", "max_span", "grace_period"}  # fmt: skip
    for f in fields(QueuePolicy):
        if f.name in set_here:
            assert getattr(expected, f.name) != getattr(defaults, f.name), f.name
    seen: list[QueuePolicy] = []
    real = sim_run.simulate

    def spy(*args: object, **kwargs: object) -> object:
        queue = kwargs["queue"]
        assert isinstance(queue, QueuePolicy)
        seen.append(queue)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sim_run, "simulate", spy)
    base = ["sim", "--profile", str(profile), "--synthetic-jobs", "50", "--synthetic-nodes", "8"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    assert seen == [expected]
    # Options given on the command line replace only their own fields.
    seen.clear()
    args = [*base, "--compare", "fcfs,f1", "--backfill", "easy", "--out", str(tmp_path / "b")]
    assert main(args) == 0
    from dataclasses import replace

    assert seen == [
        replace(expected, order="fcfs", backfill="easy"),
        replace(expected, order="f1", backfill="easy"),
    ]
