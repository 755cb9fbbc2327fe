"""openb CSV readers: real files parse; bad input names file, line and column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cplat.errors import InputError
from cplat.model import GpuModels
from cplat.traces import read_openb_nodes, read_openb_pods

NODES_OK = (
    "sn,cpu_milli,memory_mib,gpu,model\n"
    "n0,64000,262144,2,T4\nn1,96000,786432,8,G2\nc0,32000,65536,0,\n"
)
PODS_HEAD = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n"
MODELS = GpuModels(("G2", "T4"))


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_real_node_list(openb_dir: Path) -> None:
    nodes = read_openb_nodes(openb_dir / "csv" / "openb_node_list_gpu_node.csv")
    assert len(nodes) == 1213
    assert int(nodes.num_gpu.sum()) == 6212
    assert int(nodes.cpu_milli.sum()) == 107_018_000
    assert int(nodes.memory_mib.sum()) == 503_828_480
    assert set(nodes.models.names) == {"A10", "G2", "G3", "P100", "T4", "V100M16", "V100M32"}


@pytest.mark.parametrize(
    ("workload", "rows", "gpu_total_milli"),
    [
        ("default", 8152, 6_086_800),
        ("multigpu50", 9061, 11_358_800),
        ("gpuspec33", 8152, 6_086_800),
    ],
)
def test_real_pod_lists(openb_dir: Path, workload: str, rows: int, gpu_total_milli: int) -> None:
    nodes = read_openb_nodes(openb_dir / "csv" / "openb_node_list_gpu_node.csv")
    pods = read_openb_pods(openb_dir / "csv" / f"openb_pod_list_{workload}.csv", nodes.models)
    assert len(pods) == rows
    assert int(pods.total_gpu_milli.sum()) == gpu_total_milli


def test_gpu_spec_becomes_model_mask(openb_dir: Path) -> None:
    nodes = read_openb_nodes(openb_dir / "csv" / "openb_node_list_gpu_node.csv")
    pods = read_openb_pods(openb_dir / "csv" / "openb_pod_list_gpuspec33.csv", nodes.models)
    with_spec = [i for i, s in enumerate(pods.gpu_spec) if s]
    assert len(with_spec) == 2388
    for i in with_spec[:50]:
        expected = 0
        for m in pods.gpu_spec[i].split("|"):
            expected |= 1 << nodes.models.index(m)
        assert int(pods.models[i]) == expected


def test_small_files_parse(tmp_path: Path) -> None:
    nodes = read_openb_nodes(write(tmp_path, "n.csv", NODES_OK))
    assert nodes.name == ("n0", "n1", "c0")
    assert nodes.gpu_model.tolist() == [1, 0, -1]
    pods = read_openb_pods(
        write(tmp_path, "p.csv", PODS_HEAD + "p0,1000,100,1,500,T4|G2\np1,2000,10,0,0,\n"), MODELS
    )
    assert pods.models.tolist() == [3, 0]
    assert pods.total_gpu_milli.tolist() == [500, 0]


@pytest.mark.parametrize(
    ("text", "row", "field", "fragment"),
    [
        ("name,cpu_milli,memory_mib,num_gpu\np0,1,1,0\n", 1, "gpu_milli", "missing column"),
        (PODS_HEAD + "p0,-5,100,0,0,\n", 2, "cpu_milli", "non-negative integer, got -5"),
        (PODS_HEAD + "p0,1000,abc,0,0,\n", 2, "memory_mib", "got 'abc'"),
        (PODS_HEAD + "p0,1000,1,1,500,\np1,1000,1,1,2000,\n", 3, "gpu_milli", "at most 1000"),
        (PODS_HEAD + "p0,1000,1,1,500,H100\n", 2, "gpu_spec", "unknown GPU model 'H100'"),
        (PODS_HEAD + "p0,1000,1,0,300,\n", 2, "gpu_milli", "num_gpu is 0"),
        (PODS_HEAD + "p0,1000,1,2,500,\n", 2, "gpu_milli", "whole devices"),
        (PODS_HEAD + "p0,1000,1,1\n", 2, None, "expected 6 fields"),
        (PODS_HEAD.strip() + ",colour\np0,1,1,0,0,,red\n", 1, "colour", "unknown column"),
    ],
)
def test_bad_pod_rows(
    tmp_path: Path, text: str, row: int, field: str | None, fragment: str
) -> None:
    path = write(tmp_path, "pods.csv", text)
    with pytest.raises(InputError) as info:
        read_openb_pods(path, MODELS)
    err = info.value
    assert err.source == str(path)
    assert err.row == row
    assert err.field == field
    assert fragment in str(err)
    assert str(err).startswith(f"{path}:{row}: ")


@pytest.mark.parametrize(
    ("text", "row", "field"),
    [
        ("sn,cpu_milli,memory_mib,gpu\nn0,1,1,0\n", 1, "model"),
        ("sn,cpu_milli,memory_mib,gpu,model\nn0,1,1,2,\n", 2, "model"),
        ("sn,cpu_milli,memory_mib,gpu,model\nn0,1.5,1,0,\n", 2, "cpu_milli"),
        ("sn,cpu_milli,memory_mib,gpu,model\nn0,1,1,0,\nn0,1,1,0,\n", 3, "sn"),
    ],
)
def test_bad_node_rows(tmp_path: Path, text: str, row: int, field: str) -> None:
    with pytest.raises(InputError) as info:
        read_openb_nodes(write(tmp_path, "nodes.csv", text))
    assert (info.value.row, info.value.field) == (row, field)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        read_openb_nodes(tmp_path / "nope.csv")
    with pytest.raises(InputError, match="empty file"):
        read_openb_nodes(write(tmp_path, "empty.csv", ""))
    with pytest.raises(InputError, match="no pods"):
        read_openb_pods(write(tmp_path, "p.csv", PODS_HEAD), MODELS)


def test_arrays_have_engine_dtypes(tmp_path: Path) -> None:
    nodes = read_openb_nodes(write(tmp_path, "n.csv", NODES_OK))
    assert nodes.cpu_milli.dtype == np.int64 and nodes.num_gpu.dtype == np.int32
