"""The ``cplat`` command: results, files, and one-line errors with exit code 2."""

from __future__ import annotations

import csv
import gzip
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cplat.cli.main import main, parse_seeds
from cplat.errors import InputError

try:
    import aiohttp  # noqa: F401

    HAVE_SERVICE = True
except ImportError:
    HAVE_SERVICE = False


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cplat.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_parse_seeds() -> None:
    assert parse_seeds("42-44") == [42, 43, 44]
    assert parse_seeds("1,5,7-8") == [1, 5, 7, 8]
    for bad in ("", "a", "5-3", "1,,2", "-3"):
        with pytest.raises(InputError):
            parse_seeds(bad)


def test_synthetic_run_prints_table_and_writes_files(tmp_path: Path) -> None:
    res = run_cli("pack", "--synthetic", "--synthetic-nodes", "60", "--seeds", "1-2", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    for label in (
        "01-Random",
        "02-DotProd",
        "03-GpuClustering",
        "04-GpuPacking",
        "05-BestFit",
        "06-FGD",
    ):
        assert label[:6] in res.stdout
    alloc = tmp_path / "cplat-out" / "pack-alloc.csv"
    png = tmp_path / "cplat-out" / "pack.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.reader(alloc.open()))
    assert rows[0][:5] == ["workload", "sc_policy", "tune", "seed", "total_gpus"]
    assert len(rows) == 1 + 6 * 2


def test_real_trace_output_matches_published_layout(openb_dir: Path, tmp_path: Path) -> None:
    out, frag, ratio = tmp_path / "a.csv", tmp_path / "f.csv", tmp_path / "r.csv"
    res = run_cli(
        "pack",
        "--nodes",
        str(openb_dir / "csv" / "openb_node_list_gpu_node.csv"),
        "--pods",
        str(openb_dir / "csv" / "openb_pod_list_default.csv"),
        "--policy",
        "fgd,bestfit",
        "--seeds",
        "42",
        "--tune",
        "1.3",
        "--out",
        str(out),
        "--frag-out",
        str(frag),
        "--frag-ratio-out",
        str(ratio),
    )
    assert res.returncode == 0, res.stderr
    with gzip.open(
        openb_dir / "fgd_expected_results" / "analysis_allo_discrete.csv.gz", "rt"
    ) as fh:
        published_header = next(csv.reader(fh))
    rows = list(csv.reader(out.open()))
    assert rows[0] == published_header
    assert rows[1][:5] == ["openb_pod_list_default", "06-FGD", "1.3", "42", "6212"]
    assert rows[2][1] == "05-BestFit"
    # Static packing fills the cluster: allocation only grows with the arrived workload.
    values = [float(v) for v in rows[1][5:] if v]
    assert values == sorted(values) and values[-1] > 90
    with gzip.open(
        openb_dir / "fgd_expected_results" / "analysis_frag_discrete.csv.gz", "rt"
    ) as fh:
        assert next(csv.reader(fh)) == next(csv.reader(frag.open()))
    assert len(list(csv.reader(ratio.open()))) == 3


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--policy", "magic"], "unknown policy 'magic' (valid: random, dotprod"),
        (["--seeds", "x-y"], "option '--seeds'"),
        (["--synthetic-nodes", "0"], "positive node count"),
        (["--tune", "-1"], "non-negative ratio"),
    ],
)
def test_bad_options_exit_2(args: list[str], fragment: str, tmp_path: Path) -> None:
    res = run_cli("pack", "--synthetic", *args, cwd=tmp_path)
    assert res.returncode == 2
    assert fragment in res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_bad_csv_exit_2_names_file_row_column(tmp_path: Path) -> None:
    nodes = tmp_path / "nodes.csv"
    nodes.write_text("sn,cpu_milli,memory_mib,gpu,model\nn0,64000,262144,2,T4\n")
    pods = tmp_path / "pods.csv"
    pods.write_text(
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,1000,10,1,500\np1,1000,ten,1,500\n"
    )
    res = run_cli("pack", "--nodes", str(nodes), "--pods", str(pods), "--seeds", "1", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip() == (
        f"cplat pack: error: {pods}:3: column 'memory_mib': "
        "expected a non-negative integer, got 'ten'"
    )
    pods.write_text("name,cpu_milli,memory_mib,num_gpu\np0,1,1,0\n")
    res = run_cli("pack", "--nodes", str(nodes), "--pods", str(pods), cwd=tmp_path)
    assert res.returncode == 2 and "column 'gpu_milli': missing column" in res.stderr
    res = run_cli(
        "pack", "--nodes", str(tmp_path / "absent.csv"), "--pods", str(pods), cwd=tmp_path
    )
    assert res.returncode == 2 and "absent.csv: file not found" in res.stderr


def test_missing_input_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pack", "--nodes", "x.csv"]) == 2
    assert "give --nodes and --pods, or --synthetic" in capsys.readouterr().err


def test_unknown_tie_break_rejected_by_argparse(tmp_path: Path) -> None:
    res = run_cli("pack", "--synthetic", "--tie-break", "coin", cwd=tmp_path)
    assert res.returncode == 2 and "invalid choice" in res.stderr


def test_version_prints_the_installed_version() -> None:
    from importlib.metadata import version

    res = run_cli("--version")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"cplat {version('cplat')}"


def test_bare_cplat_prints_help_and_exits_0() -> None:
    res = run_cli()
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: cplat")
    for command in ("sim", "pack", "trace", "serve"):
        assert command in res.stdout
    assert res.stderr == ""


def test_unknown_command_is_a_usage_error() -> None:
    res = run_cli("simulate")
    assert res.returncode == 2 and "invalid choice" in res.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["pack", "--synthetic", "--policy", "magic"], "cplat pack: error: option '--policy': "),
        (["sim", "--placement", "magic"], "cplat sim: error: option '--placement': "),
        (["sim", "--policy", "magic"], "cplat sim: error: option '--policy': "),
        (["sim", "--compare", "fcfs,magic"], "cplat sim: error: option '--compare': "),
        (["sim", "--backfill", "magic"], "cplat sim: error: option '--backfill': "),
        (["sim", "--preemption", "magic"], "cplat sim: error: option '--preemption': "),
        (["sim", "--queue-sort", "magic"], "cplat sim: error: option '--queue-sort': "),
        (["sim", "--trace", "nokind"], "cplat sim: error: option '--trace': "),
        (["trace", "info", "nokind"], "cplat trace: error: argument 'KIND:PATH': "),
    ],
)
def test_errors_in_options_name_the_option(args: list[str], expected: str, tmp_path: Path) -> None:
    res = run_cli(*args, cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.startswith(expected), res.stderr
    assert "column" not in res.stderr and "Traceback" not in res.stderr


def test_errors_in_config_files_name_the_field(tmp_path: Path) -> None:
    profile = tmp_path / "profile.toml"
    profile.write_text('[queue]\norder = "magic"\n')
    res = run_cli("sim", "--profile", str(profile), cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.startswith(f"cplat sim: error: {profile}: field 'order': "), res.stderr


def test_input_error_kinds() -> None:
    assert str(InputError("bad", field="--port")) == "option '--port': bad"
    assert str(InputError("bad", source="a.toml", field="port")) == "a.toml: field 'port': bad"
    assert str(InputError("bad", source="a.csv", row=3, field="x")) == "a.csv:3: column 'x': bad"
    assert str(InputError("bad", source="j.parquet", field="x")) == "j.parquet: column 'x': bad"
    assert str(InputError("bad", source="t.swf.gz", field="x")) == "t.swf.gz: column 'x': bad"
    assert str(InputError("bad", field="ID", kind="argument")) == "argument 'ID': bad"
    assert str(InputError("bad", source="a.toml")) == "a.toml: bad"


@pytest.mark.skipif(not HAVE_SERVICE, reason="needs the service extra (pip install '.[service]')")
def test_serve_port_clash_exits_2_naming_the_port_without_a_banner(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        res = subprocess.run(
            [sys.executable, "-m", "cplat.cli", "serve", "--host", "127.0.0.1", "--port",
             str(port), "--data-dir", str(tmp_path / "data"), "--no-local-agent"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=120,
        )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("cplat serve: error: option '--port': cannot listen on ")
    assert f"127.0.0.1:{port}" in res.stderr
    assert "Traceback" not in res.stderr
    assert res.stdout == ""  # the banner is printed only once the socket is bound


@pytest.mark.skipif(not HAVE_SERVICE, reason="needs the service extra (pip install '.[service]')")
def test_serve_option_out_of_range_names_the_option(tmp_path: Path) -> None:
    res = run_cli("serve", "--port", "70000", "--data-dir", str(tmp_path / "d"), cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.startswith("cplat serve: error: option '--port': "), res.stderr
