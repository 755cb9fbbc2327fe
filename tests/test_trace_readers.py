"""Job-trace readers: real traces load with the documented counts; bad input is located exactly."""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TRACES

from cplat.cli.traces import add_trace_parser
from cplat.errors import InputError
from cplat.traces.dlrm import read_dlrm
from cplat.traces.load import parse_trace_spec
from cplat.traces.openb_jobs import read_openb_jobs
from cplat.traces.philly import read_gpu_jobs_csv, read_jobs_table
from cplat.traces.schema import JOB_SCHEMA, NODE_SCHEMA
from cplat.traces.spot import read_spot_nodes
from cplat.traces.swf import read_swf
from cplat.traces.trace import (
    ReadReport,
    Trace,
    jobs_table,
    nodes_parquet_path,
    nodes_table,
    read_parquet,
    summarize,
    validate_jobs,
    validate_nodes,
    write_parquet,
)


@pytest.fixture(scope="module")
def traces() -> Path:
    wanted = [
        TRACES / "swf-lublin-synthetic" / "lublin_256.swf.gz",
        TRACES / "swf-nasa-ipsc-1993" / "NASA-iPSC-1993-3.1-cln.swf.gz",
        TRACES / "alibaba-gpu-v2023-openb" / "csv" / "openb_pod_list_default.csv",
        TRACES / "alibaba-gpu-v2025-dlrm" / "disaggregated_DLRM_trace.csv.gz",
        TRACES / "alibaba-spot-gpu-v2026-nodes" / "node_info_df.csv",
    ]
    if not all(p.is_file() for p in wanted):
        pytest.skip(f"real traces not found at {TRACES} (../shared is absent)")
    return TRACES


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def column(table: pa.Table, name: str) -> list[Any]:
    return table.column(name).to_pylist()


# ------------------------------------------------------------------------------------------------
# Real traces


@pytest.mark.parametrize("name", ["lublin_256.swf.gz", "lublin_256_new2.swf.gz"])
def test_real_lublin(traces: Path, name: str) -> None:
    trace = read_swf(traces / "swf-lublin-synthetic" / name, strict=True)
    assert trace.jobs.num_rows == 10_000
    assert trace.report.rows_read == 10_000 and not trace.report.skipped
    assert trace.nodes is not None and trace.nodes.num_rows == 256
    assert set(column(trace.nodes, "cpu_milli")) == {1000}
    assert column(trace.jobs, "requested_time") == column(trace.jobs, "duration")
    assert trace.meta["estimated_requested_times"] == 10_000
    assert trace.meta["max_nodes"] == trace.meta["max_procs"] == 256
    assert max(column(trace.jobs, "num_tasks")) <= 256
    assert trace.jobs.schema.equals(JOB_SCHEMA)


def test_real_nasa_ipsc(traces: Path) -> None:
    trace = read_swf(traces / "swf-nasa-ipsc-1993" / "NASA-iPSC-1993-3.1-cln.swf.gz")
    assert trace.nodes is not None and trace.nodes.num_rows == 128
    assert trace.report.rows_read == 18_239
    # README: 173 jobs with runtime <= 0; all of them have run time exactly 0.
    assert trace.report.skipped == {"zero run time": 173}
    assert trace.jobs.num_rows == 18_239 - 173
    assert trace.meta["unix_start_time"] == 749_458_803
    assert max(column(trace.jobs, "duration")) == 62_643
    # Dropping by rule is not an error, even in strict mode.
    assert read_swf(traces / "swf-nasa-ipsc-1993" / "NASA-iPSC-1993-3.1-cln.swf.gz", strict=True)


def test_real_openb_default(traces: Path) -> None:
    csv_dir = traces / "alibaba-gpu-v2023-openb" / "csv"
    trace = read_openb_jobs(
        csv_dir / "openb_pod_list_default.csv", csv_dir / "openb_node_list_gpu_node.csv"
    )
    skipped = trace.report.rows_skipped
    assert trace.report.rows_read == 8152
    assert trace.jobs.num_rows == 8152 - skipped
    assert min(column(trace.jobs, "duration")) >= 0
    assert trace.nodes is not None and trace.nodes.num_rows == 1213
    assert sum(column(trace.nodes, "num_gpu")) == 6212
    queues = column(trace.jobs, "queue")
    assert queues.count("LS") == 4647 and queues.count("Guaranteed") == 7
    assert max(column(trace.jobs, "submit_time")) == 12_901_761


def test_real_openb_without_times_is_refused(traces: Path) -> None:
    path = traces / "alibaba-gpu-v2023-openb" / "csv" / "openb_pod_list_multigpu20.csv"
    with pytest.raises(InputError) as info:
        read_openb_jobs(path)
    assert info.value.row == 1 and info.value.field == "creation_time"


def test_real_dlrm(traces: Path) -> None:
    trace = read_dlrm(traces / "alibaba-gpu-v2025-dlrm" / "disaggregated_DLRM_trace.csv.gz")
    assert trace.jobs.num_rows == 23_871 and not trace.report.skipped
    assert trace.nodes is None
    assert trace.meta["filled_start_times"] == 23_871 - 16_591
    assert trace.meta["filled_end_times"] == 23_871 - 14_993
    assert trace.meta["trace_end"] == 2_677_541
    assert trace.meta["role.HN"] == 7386 and trace.meta["apps"] == 156
    assert sum(column(trace.jobs, "num_gpu")) == 7386
    assert min(column(trace.jobs, "duration")) >= 0


def test_real_spot_nodes(traces: Path) -> None:
    nodes = read_spot_nodes(traces / "alibaba-spot-gpu-v2026-nodes" / "node_info_df.csv")
    assert nodes.num_rows == 4278
    assert sum(column(nodes, "num_gpu")) == 10_412
    assert sum(column(nodes, "cpu_milli")) == (128 * 2947 + 192 * 1329 + 126 * 2) * 1000
    assert set(column(nodes, "memory_mib")) == {0}
    assert column(nodes, "gpu_model").count("H800") == 219


# ------------------------------------------------------------------------------------------------
# SWF

SWF_HEAD = "; Version: 2\n; MaxNodes: 4\n; MaxProcs: 16\n; UnixStartTime: 1000\n"


def swf_line(
    job: int, submit: int = 0, run: int = 10, alloc: int = 1, req: int = -1, reqt: int = -1
) -> str:
    return f"{job} {submit} -1 {run} {alloc} -1 -1 {req} {reqt} -1 1 7 -1 -1 2 -1 -1 -1\n"


def test_swf_mapping_and_nodes(tmp_path: Path) -> None:
    text = SWF_HEAD + swf_line(1, 5, 100, 2, 3) + swf_line(2, 9, 50, 4, -1, 80)
    trace = read_swf(write(tmp_path, "t.swf.gz", text))
    assert column(trace.jobs, "num_tasks") == [3, 4]
    assert column(trace.jobs, "requested_time") == [100, 80]
    assert column(trace.jobs, "user") == ["7", "7"]
    assert column(trace.jobs, "group") == ["", ""]
    assert column(trace.jobs, "queue") == ["2", "2"]
    assert set(column(trace.jobs, "cpu_milli")) == {1000}
    assert trace.meta["estimated_requested_times"] == 1
    assert trace.meta["procs_per_node"] == 4 and trace.meta["unix_start_time"] == 1000
    assert trace.nodes is not None
    assert column(trace.nodes, "name") == [f"swf-node-000{i}" for i in range(4)]
    assert set(column(trace.nodes, "cpu_milli")) == {4000}


def test_swf_header_variants(tmp_path: Path) -> None:
    only_procs = read_swf(write(tmp_path, "a.swf", "; MaxProcs: 8\n" + swf_line(1)))
    assert only_procs.nodes is not None and only_procs.nodes.num_rows == 8
    none = read_swf(write(tmp_path, "b.swf", swf_line(1)))
    assert none.nodes is None and any("no MaxNodes" in w for w in none.report.warnings)
    with pytest.raises(InputError) as info:
        read_swf(write(tmp_path, "c.swf", "; MaxNodes: 3\n; MaxProcs: 16\n" + swf_line(1)))
    assert info.value.row == 2 and info.value.field == "MaxProcs"


def test_swf_bad_rows_skipped_and_counted(tmp_path: Path) -> None:
    lines = [
        swf_line(1),
        "2 0 -1 10 1 -1\n",  # line 6: 6 fields
        swf_line(3).replace(" 10 ", " ten ", 1),  # line 7: non-numeric run time
        swf_line(4, run=0),
        swf_line(5, run=-1),
        swf_line(6, alloc=-1),
        swf_line(1),  # line 11: duplicate id
        swf_line(7),
    ]
    trace = read_swf(write(tmp_path, "bad.swf", SWF_HEAD + "".join(lines)))
    assert column(trace.jobs, "job_id") == [1, 7]
    assert trace.report.rows_read == 8 and trace.report.rows_kept == 2
    assert trace.report.skipped == {
        "wrong field count": 1,
        "non-numeric field": 1,
        "zero run time": 1,
        "unknown run time": 1,
        "no processors": 1,
        "duplicate job id": 1,
    }
    assert trace.report.examples[0].endswith(
        "bad.swf:6: expected 18 whitespace-separated fields, found 6"
    )
    assert "bad.swf:7: column 'run_time': expected a number, got 'ten'" in trace.report.examples[1]
    assert "skipped 1: zero run time" in trace.report.summary()


@pytest.mark.parametrize(
    ("bad", "line", "field"),
    [
        ("2 0 -1 10 1 -1\n", 6, None),
        (swf_line(2).replace(" 10 ", " ten ", 1), 6, "run_time"),
        (swf_line(2).replace(" 7 ", " x7 ", 1), 6, "user_id"),
        (swf_line(2, submit=-5), 6, "submit_time"),
        (swf_line(1), 6, "job_id"),
    ],
)
def test_swf_strict_names_line_and_field(
    tmp_path: Path, bad: str, line: int, field: str | None
) -> None:
    path = write(tmp_path, "s.swf", SWF_HEAD + swf_line(1) + bad)
    with pytest.raises(InputError) as info:
        read_swf(path, strict=True)
    assert info.value.source == str(path)
    assert info.value.row == line and info.value.field == field
    assert str(info.value).startswith(f"{path}:{line}: ")


def test_swf_unsorted_ids_are_sorted(tmp_path: Path) -> None:
    trace = read_swf(write(tmp_path, "u.swf", SWF_HEAD + swf_line(3) + swf_line(1) + swf_line(2)))
    assert column(trace.jobs, "job_id") == [1, 2, 3]
    assert trace.meta["unsorted_job_ids"] == 1
    assert any(w.startswith("unsorted job ids") for w in trace.report.warnings)


def test_swf_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        read_swf(tmp_path / "nope.swf")


# ------------------------------------------------------------------------------------------------
# openb as jobs

POD_HEAD = (
    "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,"
    "creation_time,deletion_time,scheduled_time\n"
)
NODES = "sn,cpu_milli,memory_mib,gpu,model\nn0,64000,262144,2,T4\nn1,96000,786432,8,G2\n"


def test_openb_jobs_mapping_and_skips(tmp_path: Path) -> None:
    pods = write(
        tmp_path,
        "pods.csv",
        POD_HEAD
        + "p0,1000,2048,1,500,T4,LS,Running,10,110,10\n"
        + "p1,1000,2048,0,0,,BE,Pending,20,,\n"  # line 3: no deletion time
        + "p2,2000,4096,2,1000,G2|T4,BE,Failed,30,40,31\n",
    )
    nodes = write(tmp_path, "nodes.csv", NODES)
    trace = read_openb_jobs(pods, nodes, strict=True)
    assert column(trace.jobs, "job_id") == [0, 2]
    assert column(trace.jobs, "submit_time") == [10, 30]
    assert column(trace.jobs, "duration") == [100, 10]
    assert column(trace.jobs, "gpu_models") == ["T4", "G2|T4"]
    assert column(trace.jobs, "queue") == ["LS", "BE"]
    assert trace.report.skipped == {"missing deletion_time": 1}
    assert trace.nodes is not None and column(trace.nodes, "gpu_model") == ["T4", "G2"]
    assert trace.meta["phase.Running"] == 1


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        ("p,1000,2048,1,500,V100,LS,Running,10,110,10", "gpu_spec", "unknown GPU model"),
        ("p,1000,2048,0,500,,LS,Running,10,110,10", "gpu_milli", "bad gpu_milli"),
        ("p,1000,2048,2,500,,LS,Running,10,110,10", "gpu_milli", "bad gpu_milli"),
        ("p,abc,2048,1,500,,LS,Running,10,110,10", "cpu_milli", "bad cpu_milli"),
        ("p,1000,2048,1,500,,LS,Running,100,50,10", "deletion_time", "negative duration"),
        ("p,1000,2048,1,500,,LS", None, "wrong field count"),
    ],
)
def test_openb_jobs_bad_rows(tmp_path: Path, row: str, field: str | None, reason: str) -> None:
    good = "ok,1000,2048,1,1000,,LS,Running,0,5,0\n"
    pods = write(tmp_path, "pods.csv", POD_HEAD + good + row + "\n")
    nodes = write(tmp_path, "nodes.csv", NODES)
    trace = read_openb_jobs(pods, nodes)
    assert trace.jobs.num_rows == 1 and trace.report.skipped == {reason: 1}
    with pytest.raises(InputError) as info:
        read_openb_jobs(pods, nodes, strict=True)
    assert info.value.row == 3 and info.value.field == field


# ------------------------------------------------------------------------------------------------
# DLRM

DLRM_HEAD = (
    "instance_sn,role,app_name,cpu_request,cpu_limit,gpu_request,gpu_limit,rdma_request,"
    "rdma_limit,memory_request,memory_limit,disk_request,disk_limit,max_instance_per_node,"
    "creation_time,scheduled_time,deletion_time\n"
)


def dlrm_row(cpu: str = "12", gpu: str = "1", mem: str = "1.5", times: str = ",,") -> str:
    return f"i,HN,app_0,{cpu},12,{gpu},1,25,25,{mem},120.0,640.0,800.0,8,{times}\n"


def test_dlrm_mapping_and_filled_times(tmp_path: Path) -> None:
    rows = [
        dlrm_row(times=",,"),
        dlrm_row(cpu="0.5", gpu="0", times="100.0000001,101,"),
        dlrm_row(times=",,50"),
        dlrm_row(times="200,210,300"),
    ]
    trace = read_dlrm(write(tmp_path, "d.csv.gz", DLRM_HEAD + "".join(rows)))
    assert column(trace.jobs, "submit_time") == [0, 100, 0, 200]
    assert column(trace.jobs, "duration") == [300, 200, 50, 100]
    assert column(trace.jobs, "cpu_milli") == [12000, 500, 12000, 12000]
    assert column(trace.jobs, "memory_mib") == [1536] * 4
    assert column(trace.jobs, "gpu_milli") == [1000, 0, 1000, 1000]
    assert column(trace.jobs, "group") == ["app_0"] * 4
    assert column(trace.jobs, "queue") == ["HN"] * 4
    assert trace.meta["filled_start_times"] == 2 and trace.meta["filled_end_times"] == 2
    assert trace.meta["trace_end"] == 300


@pytest.mark.parametrize(
    ("row", "field"),
    [
        (dlrm_row(cpu="abc"), "cpu_request"),
        (dlrm_row(gpu="0.5"), "gpu_request"),
        (dlrm_row(mem="-1"), "memory_request"),
        (dlrm_row(times="300,,200"), "deletion_time"),
        (dlrm_row(times="x,,"), "creation_time"),
    ],
)
def test_dlrm_bad_rows(tmp_path: Path, row: str, field: str) -> None:
    path = write(tmp_path, "d.csv", DLRM_HEAD + dlrm_row() + row)
    trace = read_dlrm(path)
    assert trace.jobs.num_rows == 1 and trace.report.rows_skipped == 1
    with pytest.raises(InputError) as info:
        read_dlrm(path, strict=True)
    assert info.value.row == 3 and info.value.field == field


# ------------------------------------------------------------------------------------------------
# Spot nodes

SPOT_HEAD = "gpu_model,gpu_capacity_num,cpu_num,node_name\n"


def test_spot_nodes_bad_rows(tmp_path: Path) -> None:
    path = write(tmp_path, "n.csv", SPOT_HEAD + "A10,1,128,0\nH800,8,192,0\n,4,128,2\nA10,x,1,3\n")
    with pytest.warns(UserWarning, match="duplicate node name"):
        nodes = read_spot_nodes(path)
    assert column(nodes, "name") == ["0"] and column(nodes, "cpu_milli") == [128_000]
    with pytest.raises(InputError) as info:
        read_spot_nodes(path, strict=True)
    assert info.value.row == 3 and info.value.field == "node_name"
    path = write(tmp_path, "m.csv", SPOT_HEAD + ",4,128,2\n")
    with pytest.raises(InputError) as info:
        read_spot_nodes(path, strict=True)
    assert info.value.row == 2 and info.value.field == "gpu_model"


# ------------------------------------------------------------------------------------------------
# Philly-style GPU jobs and mapped tables

PHILLY_HEAD = "job_id,timestamp,duration,num_gpus,user,cluster,status,extra\n"


def test_gpu_jobs_csv_sorted_relative_times(tmp_path: Path) -> None:
    text = (
        PHILLY_HEAD
        + "7,2017-10-03 02:05:00,60,4,u1,vc1,Pass,x\n"
        + "3,2017-10-03T02:04:00Z,30.4,0,u2,vc2,Killed,x\n"
        + "9,2017-10-03T04:04:00+02:00,0,1,u1,vc1,Pass,x\n"
    )
    trace = read_gpu_jobs_csv(write(tmp_path, "p.csv", text), strict=True)
    assert column(trace.jobs, "job_id") == [3, 9, 7]
    assert column(trace.jobs, "submit_time") == [0, 0, 60]
    assert column(trace.jobs, "duration") == [30, 0, 60]
    assert column(trace.jobs, "num_gpu") == [0, 1, 4]
    assert column(trace.jobs, "gpu_milli") == [0, 1000, 1000]
    assert column(trace.jobs, "group") == ["vc2", "vc1", "vc1"]
    assert trace.meta["status.Pass"] == 2 and trace.meta["job_id_source"] == "column"
    assert trace.meta["start_time"] == "2017-10-03T02:04:00+00:00"


def test_gpu_jobs_csv_string_ids_and_format(tmp_path: Path) -> None:
    text = (
        "job_id,timestamp,duration,num_gpus\n"
        "app_2,03/10/2017 10:00,5,1\napp_1,03/10/2017 09:00,5,1\n"
    )
    trace = read_gpu_jobs_csv(write(tmp_path, "p.csv", text), time_format="%d/%m/%Y %H:%M")
    assert column(trace.jobs, "job_id") == [0, 1]
    assert column(trace.jobs, "submit_time") == [0, 3600]
    assert trace.meta["job_id_source"] == "position" and trace.report.warnings


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        ("2,yesterday,5,1", "timestamp", "bad timestamp"),
        ("2,2017-10-03 02:05:00,-5,1", "duration", "bad duration"),
        ("2,2017-10-03 02:05:00,5,1.5", "num_gpus", "bad num_gpus"),
        ("1,2017-10-03 02:05:00,5,1", "job_id", "duplicate job id"),
    ],
)
def test_gpu_jobs_csv_bad_rows(tmp_path: Path, row: str, field: str, reason: str) -> None:
    path = write(
        tmp_path, "p.csv", "job_id,timestamp,duration,num_gpus\n1,2017-10-03 02:00:00,5,1\n" + row
    )
    trace = read_gpu_jobs_csv(path)
    assert trace.jobs.num_rows == 1 and trace.report.skipped == {reason: 1}
    with pytest.raises(InputError) as info:
        read_gpu_jobs_csv(path, strict=True)
    assert info.value.row == 3 and info.value.field == field


def test_jobs_table_csv_mapping_and_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "j.csv", "id,t,run,gpus,who\n5,0,10,2,ann\n6,3,4.0,0,bob\n")
    mapping = {"job_id": "id", "submit_time": "t", "duration": "run", "num_gpu": "gpus"}
    mapping["user"] = "who"
    trace = read_jobs_table(path, mapping, defaults={"queue": "batch", "num_tasks": 2})
    assert column(trace.jobs, "job_id") == [5, 6]
    assert column(trace.jobs, "duration") == [10, 4]
    assert column(trace.jobs, "gpu_milli") == [1000, 0]
    assert column(trace.jobs, "queue") == ["batch", "batch"]
    assert column(trace.jobs, "num_tasks") == [2, 2]
    assert column(trace.jobs, "requested_time") == [None, None]
    assert column(trace.jobs, "user") == ["ann", "bob"]


def test_jobs_table_parquet(tmp_path: Path) -> None:
    path = tmp_path / "j.parquet"
    pq.write_table(pa.table({"sub": [0, 5, 7], "dur": [1.0, 2.0, -3.0], "req": [None, 4, 9]}), path)
    mapping = {"submit_time": "sub", "duration": "dur", "requested_time": "req"}
    trace = read_jobs_table(path, mapping)
    assert column(trace.jobs, "job_id") == [0, 1]
    assert column(trace.jobs, "requested_time") == [None, 4]
    assert trace.report.skipped == {"bad dur": 1}
    with pytest.raises(InputError) as info:
        read_jobs_table(path, mapping, strict=True)
    assert info.value.row == 3 and info.value.field == "dur"


def test_jobs_table_mapping_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "j.csv", "id,t\n1,0\n")
    with pytest.raises(InputError, match="valid: job_id, submit_time") as info:
        read_jobs_table(path, {"submit": "t"})
    assert info.value.field == "submit"
    with pytest.raises(InputError, match="mapped to 'duration'") as info:
        read_jobs_table(path, {"submit_time": "t", "duration": "runtime"})
    assert info.value.field == "runtime" and info.value.row == 1
    with pytest.raises(InputError, match="bad default") as info:
        read_jobs_table(path, {"submit_time": "t"}, defaults={"num_tasks": 0})
    assert info.value.field == "num_tasks"
    bad = write(tmp_path, "k.csv", "id,t,g,m\n1,0,1,0\n")
    mapping = {"job_id": "id", "submit_time": "t", "num_gpu": "g", "gpu_milli": "m"}
    with pytest.raises(InputError) as info:
        read_jobs_table(bad, mapping, strict=True)
    assert info.value.row == 2 and info.value.field == "m"


# ------------------------------------------------------------------------------------------------
# Tables: validation, Parquet, summary


def tiny_jobs() -> pa.Table:
    return jobs_table(
        {
            "job_id": [1, 2, 3],
            "submit_time": [0, 100, 86_500],
            "duration": [10, 20, 30],
            "requested_time": [15, None, 30],
            "num_tasks": [1, 2, 1],
            "cpu_milli": [1000, 500, 0],
            "num_gpu": [0, 1, 2],
            "gpu_milli": [0, 500, 1000],
            "user": ["a", "b", "a"],
            "group": ["g", "g", ""],
        }
    )


def tiny_nodes() -> pa.Table:
    return nodes_table(
        {
            "name": ["n0", "n1"],
            "cpu_milli": [4000, 8000],
            "num_gpu": [0, 8],
            "gpu_model": ["", "A10"],
        }
    )


def test_validate_jobs_rules() -> None:
    validate_jobs(tiny_jobs())
    good = tiny_jobs()
    cases = [
        ("job_id", [1, 1, 3], "duplicate job id 1"),
        ("num_tasks", [1, 0, 1], "num_tasks must be >= 1"),
        ("gpu_milli", [0, 0, 1000], "num_gpu 1 needs"),
        ("gpu_milli", [5, 500, 1000], "num_gpu 0 needs"),
        ("gpu_milli", [0, 500, 999], "num_gpu > 1 needs"),
        ("duration", [10, -1, 30], "negative value -1 at row index 1"),
    ]
    for name, values, message in cases:
        i = good.schema.get_field_index(name)
        bad = good.set_column(
            i, good.schema.field(name), pa.array(values, good.schema.field(name).type)
        )
        with pytest.raises(InputError, match=message):
            validate_jobs(bad)
    with pytest.raises(InputError, match="missing columns"):
        validate_jobs(good.drop_columns(["queue"]))


def test_validate_nodes_rules() -> None:
    validate_nodes(tiny_nodes())
    dup = nodes_table({"name": ["a", "a"], "cpu_milli": [1, 1], "num_gpu": [0, 0]})
    with pytest.raises(InputError, match="duplicate node name"):
        validate_nodes(dup)
    no_model = nodes_table({"name": ["a"], "cpu_milli": [1], "num_gpu": [2]})
    with pytest.raises(InputError, match="no GPU model") as info:
        validate_nodes(no_model)
    assert info.value.field == "gpu_model"


def test_parquet_round_trip(tmp_path: Path) -> None:
    jobs, nodes = tiny_jobs(), tiny_nodes()
    path = tmp_path / "t.parquet"
    assert write_parquet(jobs, path) == [path]
    assert read_parquet(path).equals(jobs)
    report = ReadReport(source="x", rows_read=3, rows_kept=3)
    trace = Trace(jobs=jobs, nodes=nodes, report=report, meta={"format": "test", "n": 3})
    written = write_parquet(trace, tmp_path / "tr.parquet")
    assert written == [tmp_path / "tr.parquet", tmp_path / "tr.nodes.parquet"]
    assert nodes_parquet_path(tmp_path / "tr.parquet") == written[1]
    back = read_parquet(written[0])
    assert back.equals(jobs) and back.schema.equals(JOB_SCHEMA, check_metadata=True)
    assert read_parquet(written[1]).equals(nodes)
    assert read_parquet(written[1]).schema.equals(NODE_SCHEMA)


def test_read_parquet_rejects_other_tables(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"job_id": [1], "submit": [0]}), path)
    with pytest.raises(InputError, match="missing columns") as info:
        read_parquet(path)
    assert info.value.source == str(path)
    wide = tiny_jobs().set_column(0, "job_id", pa.array(["1", "2", "3"]))
    pq.write_table(wide, path)
    with pytest.raises(InputError, match="type string") as info:
        read_parquet(path, kind="jobs")
    assert info.value.field == "job_id"
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(InputError, match="cannot read Parquet"):
        read_parquet(tmp_path / "junk.parquet")


def test_summarize_tiny() -> None:
    s = summarize(tiny_jobs(), tiny_nodes())
    assert s["jobs"] == 3 and s["span_s"] == 86_500 and s["span_days"] == 1.0
    assert s["users"] == 2 and s["groups"] == 1 and s["queues"] == 0
    assert s["tasks_total"] == 4 and s["tasks_max"] == 2
    assert s["gpu_jobs"] == 2 and s["shared_gpu_jobs"] == 1
    assert s["requested_known"] == 2 and s["requested_coverage"] == round(2 / 3, 4)
    assert s["nodes"] == 2 and s["node_gpus"] == 8 and s["gpu_models"] == "A10:8"
    assert summarize(tiny_jobs().slice(0, 0)) == {"jobs": 0}


# ------------------------------------------------------------------------------------------------
# Command line


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cplat")
    add_trace_parser(p.add_subparsers(dest="command", required=True))
    return p


def test_parse_trace_spec() -> None:
    assert parse_trace_spec("swf:a/b.swf") == ("swf", Path("a/b.swf"))
    assert parse_trace_spec("SWF:c:/x") == ("swf", Path("c:/x"))
    for bad, message in (
        ("foo:x", "unknown trace kind 'foo'"),
        ("x.swf", "KIND:PATH"),
        ("swf:", "missing path"),
    ):
        with pytest.raises(InputError, match=message):
            parse_trace_spec(bad)


def test_cli_convert_and_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    swf = write(tmp_path, "t.swf", SWF_HEAD + swf_line(1) + swf_line(2, run=0))
    out = tmp_path / "o" / "t.parquet"
    args = parser().parse_args(["trace", "convert", f"swf:{swf}", "--out", str(out)])
    assert args.func(args) == 0
    assert read_parquet(out).num_rows == 1
    assert read_parquet(tmp_path / "o" / "t.nodes.parquet").num_rows == 4
    args = parser().parse_args(["trace", "info", f"swf:{swf}"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "zero run time" in printed and "procs_per_node" in printed
    args = parser().parse_args(["trace", "info", f"swf:{swf}", "--nodes", "n.csv"])
    with pytest.raises(InputError, match="openb traces only"):
        args.func(args)
    args = parser().parse_args(["trace", "info", f"dlrm:{tmp_path / 'missing.csv'}"])
    with pytest.raises(InputError, match="file not found"):
        args.func(args)


# ------------------------------------------------------------------------------------------------
# Issue 10: negative processor counts, Philly gangs, Parquet traces, Philly machine lists


@pytest.mark.parametrize(
    ("alloc", "req", "field"),
    [(-2, 4, "allocated_processors"), (4, -7, "requested_processors")],
)
def test_swf_negative_processors_other_than_minus_one(
    tmp_path: Path, alloc: int, req: int, field: str
) -> None:
    path = write(tmp_path, "n.swf", SWF_HEAD + swf_line(1) + swf_line(2, alloc=alloc, req=req))
    trace = read_swf(path)
    assert column(trace.jobs, "job_id") == [1]
    assert trace.report.skipped == {"negative processors": 1}
    with pytest.raises(InputError) as info:
        read_swf(path, strict=True)
    assert info.value.row == 6 and info.value.field == field
    assert "-1 (unknown)" in str(info.value)
    # -1 stays SWF's "unknown": the other count gives the width.
    ok = read_swf(write(tmp_path, "ok.swf", SWF_HEAD + swf_line(1, alloc=-1, req=3)), strict=True)
    assert column(ok.jobs, "num_tasks") == [3]


def test_philly_wide_jobs_become_gangs_of_machine_sized_tasks(tmp_path: Path) -> None:
    from cplat.traces.philly import gang_shape

    rows = [(1, 1), (2, 8), (3, 128), (4, 12), (5, 9), (6, 11), (7, 0)]
    text = "job_id,timestamp,duration,num_gpus\n" + "".join(
        f"{j},2017-10-03 02:00:{j:02d},5,{g}\n" for j, g in rows
    )
    trace = read_gpu_jobs_csv(write(tmp_path, "g.csv", text), strict=True)
    assert column(trace.jobs, "num_tasks") == [1, 1, 16, 2, 3, 11, 1]
    assert column(trace.jobs, "num_gpu") == [1, 8, 8, 6, 3, 1, 0]
    # Every job keeps its exact GPU count, and no task is wider than a machine.
    for (_, g), tasks, per in zip(
        rows, column(trace.jobs, "num_tasks"), column(trace.jobs, "num_gpu"), strict=True
    ):
        assert tasks * per == g and per <= 8
    assert trace.meta["gang_jobs"] == 4 and trace.meta["gpus_per_machine"] == 8
    assert trace.lines is not None and trace.lines.tolist() == [2, 3, 4, 5, 6, 7, 8]
    two = read_gpu_jobs_csv(write(tmp_path, "g.csv", text), gpus_per_machine=2)
    assert column(two.jobs, "num_tasks")[:3] == [1, 4, 64]
    assert gang_shape(16, 8) == (2, 8) and gang_shape(7, 8) == (1, 7)
    with pytest.raises(InputError) as info:
        read_gpu_jobs_csv(write(tmp_path, "g.csv", text), gpus_per_machine=0)
    assert info.value.field == "gpus_per_machine"


def test_parquet_trace_kind_reads_what_convert_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cplat.traces.load import TRACE_KINDS, load_trace

    assert "parquet" in TRACE_KINDS
    swf = write(tmp_path, "t.swf", SWF_HEAD + swf_line(1, 5, 100, 2, 3) + swf_line(2, 9, 50, 4))
    out = tmp_path / "t.parquet"
    args = parser().parse_args(["trace", "convert", f"swf:{swf}", "--out", str(out)])
    assert args.func(args) == 0
    original = read_swf(swf)
    kind, path = parse_trace_spec(f"parquet:{out}")
    back = load_trace(kind, path)
    assert back.jobs.equals(original.jobs)
    assert back.nodes is not None and original.nodes is not None
    assert back.nodes.equals(original.nodes)
    assert back.meta["format"] == "parquet" and back.meta["source_format"] == "swf"
    assert back.meta["max_procs"] == 16 and back.meta["converted_from"] == str(swf)
    assert back.report.rows_kept == 2 and back.lines is not None
    # Not a jobs table: an error naming the file, not a crash.
    nodes_only = tmp_path / "t.nodes.parquet"
    with pytest.raises(InputError) as info:
        load_trace("parquet", nodes_only)
    assert str(nodes_only) in str(info.value)


PHILLY_MACHINES = (
    "machineId, number of GPUs, single GPU mem\nm1,8,24G\nm2, 8 , 24G\nm3,2,12G\nm4,0,\n"
)


def test_philly_machine_list(tmp_path: Path) -> None:
    from cplat.traces.cluster import load_cluster, read_philly_machines

    path = write(tmp_path, "cluster_machine_list", PHILLY_MACHINES)
    table = read_philly_machines(path, strict=True)
    assert table.schema.equals(NODE_SCHEMA, check_metadata=False)
    assert column(table, "name") == ["m1", "m2", "m3", "m4"]
    assert column(table, "num_gpu") == [8, 8, 2, 0]
    assert column(table, "gpu_model") == ["24G", "24G", "12G", ""]
    assert set(column(table, "cpu_milli")) == {0} and set(column(table, "memory_mib")) == {0}
    # Read directly by --cluster: with its kind, or recognised by its header.
    for spec in (str(path), f"philly:{path}"):
        nodes = load_cluster(spec)
        assert nodes.name == ("m1", "m2", "m3", "m4")
        assert nodes.num_gpu.tolist() == [8, 8, 2, 0]
        assert nodes.models.names == ("12G", "24G")


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        ("m1,8,24G", "machineId", "duplicate machine id"),
        (",8,24G", "machineId", "bad machineId"),
        ("m9,-1,24G", "number of GPUs", "bad number of GPUs"),
        ("m9,65,24G", "number of GPUs", "bad number of GPUs"),
        ("m9,4,", "single GPU mem", "bad single GPU mem"),
        ("m9,4,lots", "single GPU mem", "bad single GPU mem"),
        ("m9,4,24G|12G", "single GPU mem", "bad single GPU mem"),
    ],
)
def test_philly_machine_list_bad_rows(tmp_path: Path, row: str, field: str, reason: str) -> None:
    from cplat.traces.cluster import read_philly_machines

    path = write(tmp_path, "m.csv", "machineId,number of GPUs,single GPU mem\nm1,8,24G\n" + row)
    with pytest.warns(UserWarning, match=reason):
        table = read_philly_machines(path)
    assert table.num_rows == 1
    with pytest.raises(InputError) as info:
        read_philly_machines(path, strict=True)
    assert info.value.row == 3 and info.value.field == field


def test_cluster_spec_errors(tmp_path: Path) -> None:
    from cplat.traces.cluster import load_cluster

    with pytest.raises(InputError, match="file not found"):
        load_cluster(str(tmp_path / "absent.csv"))
    with pytest.raises(InputError) as info:
        load_cluster("philly:")
    assert info.value.field == "--cluster"
    empty = write(tmp_path, "e.csv", "machineId,number of GPUs,single GPU mem\n")
    with pytest.raises(InputError, match="no machines"):
        load_cluster(str(empty))
