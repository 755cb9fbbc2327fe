"""``cplat experiments`` / ``cplat models`` and ``cplat job submit --from-run`` against a real
``cplat serve`` (its MLflow-compatible API), with the standard-library client only.

One server for the module; the data is written through the REST API the way the MLflow client
writes it. Tokens: ``ana`` (member of vision) and ``eve`` (member of another project).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("aiohttp")

from cplat.cli.main import build_parser, main  # noqa: E402
from cplat.cli.tracking import MlflowApi, prepare_submission  # noqa: E402
from cplat.client import Client  # noqa: E402
from cplat.testing.served import Served, serve  # noqa: E402
from cplat.testing.service import token  # noqa: E402

ANA = token("ana", "vision", "member")
EVE = token("eve", "other", "member")
API = "/api/2.0/mlflow"


def post(served: Served, path: str, body: dict[str, Any], tok: str = ANA) -> dict[str, Any]:
    status, data = served.call("POST", API + path, tok, body)
    assert status == 200, data
    return dict(data)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A server with experiment ``cli-exp`` (three runs), ``other-exp`` and a model."""
    with serve(tmp_path_factory.mktemp("cli")) as served:
        exp = post(served, "/experiments/create", {"name": "cli-exp"})["experiment_id"]
        post(served, "/experiments/create", {"name": "other-exp"})
        runs = {}
        for name, lr, accs in (
            ("slow", "0.001", [0.2, 0.4, 0.5]),
            ("good", "0.01", [0.3, 0.7, 0.95]),
            ("fast", "0.1", [0.6, 0.8, 0.91]),
        ):
            run = post(served, "/runs/create", {"experiment_id": exp, "run_name": name})
            run_id = run["run"]["info"]["run_id"]
            metrics = [
                {"key": "acc", "value": a, "timestamp": 1_700_000_000_000 + s, "step": s}
                for s, a in enumerate(accs)
            ]
            metrics += [
                {"key": "loss", "value": 1 - a, "timestamp": 1_700_000_000_000 + s, "step": s}
                for s, a in enumerate(accs)
            ]
            post(
                served,
                "/runs/log-batch",
                {"run_id": run_id, "metrics": metrics, "params": [{"key": "lr", "value": lr}]},
            )
            post(served, "/runs/update", {"run_id": run_id, "status": "FINISHED", "end_time": 1})
            runs[name] = run_id
        # A run recorded from a job, as the service records them (see cplat.ml.tracking.jobs).
        job_tags = {
            "cplat.command": json.dumps(["python", "train.py", "--lr", "0.01"]),
            "cplat.resources": json.dumps(
                {
                    "count": 2,
                    "resources": {
                        "cpu_milli": 4000,
                        "memory_mib": 16384,
                        "num_gpu": 1,
                        "gpu_milli": 1000,
                        "gpu_models": ["H100"],
                    },
                }
            ),
            "cplat.job_spec": json.dumps(
                {
                    "priority": 7,
                    "max_runtime": 7200,
                    "on_failure": "restart",
                    "max_restarts": 3,
                    "gang": True,
                    "workdir": None,
                    "env_names": ["HF_TOKEN", "SEED"],
                }
            ),
            "cplat.job_name": "trainer",
        }
        post(
            served,
            "/runs/log-batch",
            {"run_id": runs["good"], "tags": [{"key": k, "value": v} for k, v in job_tags.items()]},
        )
        post(served, "/registered-models/create", {"name": "cli-model", "description": "digits"})
        post(
            served,
            "/model-versions/create",
            {"name": "cli-model", "source": f"runs:/{runs['good']}/model", "run_id": runs["good"]},
        )
        post(
            served,
            "/registered-models/alias",
            {"name": "cli-model", "alias": "champion", "version": "1"},
        )
        yield {"served": served, "exp": exp, "runs": runs}


def cli(
    world: dict[str, Any], capsys: pytest.CaptureFixture[str], *argv: str, tok: str = ANA
) -> tuple[int, str, str]:
    served: Served = world["served"]
    code = main([*argv[:2], "--server", served.url, "--token", tok, *argv[2:]])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_experiments_list_and_show(
    world: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(world, capsys, "experiments", "list")
    assert code == 0 and "cli-exp" in out and "other-exp" in out
    code, out, _ = cli(world, capsys, "experiments", "list", "--json")
    names = {e["name"] for e in json.loads(out)}
    assert {"cli-exp", "other-exp"} <= names
    code, out, _ = cli(world, capsys, "experiments", "show", "cli-exp")
    assert code == 0 and "3 FINISHED" in out and world["exp"] in out
    # Another project's token sees none of it.
    code, out, _ = cli(world, capsys, "experiments", "list", tok=EVE)
    assert code == 0 and "cli-exp" not in out
    code, _, err = cli(world, capsys, "experiments", "show", "cli-exp", tok=EVE)
    assert code == 2 and "not found" in err


def test_runs_filter_and_order(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(
        world, capsys, "experiments", "runs", "cli-exp",
        "--filter", "metrics.acc > 0.9", "--order-by", "metrics.acc DESC", "--json",
    )  # fmt: skip
    assert code == 0
    assert [r["info"]["run_name"] for r in json.loads(out)] == ["good", "fast"]
    code, out, _ = cli(
        world, capsys, "experiments", "runs", "cli-exp", "--filter", "params.lr = '0.001'"
    )
    assert code == 0 and "slow" in out and "good" not in out and "params.lr" in out
    code, out, _ = cli(world, capsys, "experiments", "runs", "cli-exp", "--limit", "2", "--json")
    assert len(json.loads(out)) == 2
    code, _, err = cli(
        world, capsys, "experiments", "runs", "cli-exp", "--filter", "metrics.acc >>> 1"
    )
    assert code == 2 and "--filter" in err
    code, _, err = cli(world, capsys, "experiments", "runs", "cli-exp", "--limit", "0")
    assert code == 2 and "--limit" in err
    code, _, err = cli(world, capsys, "experiments", "runs", "no-such-exp")
    assert code == 2 and "no-such-exp" in err


def test_compare_table_and_png(
    world: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    runs = world["runs"]
    png = tmp_path / "acc.png"
    code, out, _ = cli(
        world, capsys, "experiments", "compare", runs["slow"], runs["good"],
        "--metric", "acc", "--png", str(png),
    )  # fmt: skip
    assert code == 0
    assert "params.lr" in out and "0.001" in out and "0.01" in out and "metrics.acc" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    code, out, _ = cli(
        world,
        capsys,
        "experiments",
        "compare",
        runs["good"],
        runs["fast"],
        "--metric",
        "loss",
        "--json",
    )
    history = json.loads(out)["history"]["loss"]
    assert [p["step"] for p in history[runs["good"]]] == [0, 1, 2]


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        (["--png", "x.png"], "--metric"),
        (["--metric", "nope"], "--metric"),
        (["--metric", "acc", "--png", "out.txt"], "--png"),
        (["--metric", "acc", "--png", "/no/such/dir/x.png"], "--png"),
    ],
)
def test_compare_bad_options_name_the_option(
    world: dict[str, Any], capsys: pytest.CaptureFixture[str], extra: list[str], field: str
) -> None:
    code, _, err = cli(world, capsys, "experiments", "compare", world["runs"]["good"], *extra)
    assert code == 2 and f"(field: {field})" in err


def test_compare_bad_run_ids(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(world, capsys, "experiments", "compare", "../../etc/passwd")
    assert code == 2 and "RUN_ID" in err
    code, _, err = cli(world, capsys, "experiments", "compare", "0" * 32)
    assert code == 2 and "not found" in err
    # Another project's run does not exist for this token.
    code, _, err = cli(world, capsys, "experiments", "compare", world["runs"]["good"], tok=EVE)
    assert code == 2 and "not found" in err


def test_models_list_and_show(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(world, capsys, "models", "list")
    assert code == 0 and "cli-model" in out and "champion" in out
    code, out, _ = cli(world, capsys, "models", "show", "cli-model")
    assert code == 0 and "digits" in out and world["runs"]["good"] in out
    code, out, _ = cli(world, capsys, "models", "show", "cli-model", "--json")
    assert json.loads(out)["versions"][0]["version"] == "1"
    code, out, _ = cli(world, capsys, "models", "list", tok=EVE)
    assert code == 0 and "cli-model" not in out
    code, _, err = cli(world, capsys, "models", "show", "cli-model", tok=EVE)
    assert code == 2


def submit_args(world: dict[str, Any], *argv: str) -> argparse.Namespace:
    served: Served = world["served"]
    return build_parser().parse_args(
        ["job", "submit", "--server", served.url, "--token", ANA, *argv]
    )


def test_from_run_fills_what_is_not_given(
    world: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = world["runs"]["good"]
    args = submit_args(
        world, "--from-run", run_id, "--cpu", "2", "--env", "SEED=3", "--no-snapshot"
    )
    api = MlflowApi(Client(world["served"].url, ANA))
    command, experiment = prepare_submission(args, [], api)
    assert command == ["python", "train.py", "--lr", "0.01"]
    assert experiment == {"name": "cli-exp", "from_run": run_id}
    assert args.cpu == "2"  # given: wins over the recorded 4 cores
    assert (args.memory, args.gpus, args.gpu_model) == ("16384", 1, ["H100"])
    assert (args.tasks[1], args.priority, args.max_runtime) == (2, 7, "7200")
    assert (args.on_failure, args.max_restarts, args.name) == ("restart", 3, "trainer")
    # Env values are never recorded: the user hears which names to give again.
    assert "HF_TOKEN" in capsys.readouterr().err
    # A command and an experiment given on the command line win; a snapshot is taken.
    args = submit_args(world, "--from-run", run_id, "--experiment", "other-exp", "--run-name", "r2")
    command, experiment = prepare_submission(args, ["python", "eval.py"], api)
    assert command == ["python", "eval.py"] and experiment is not None
    assert experiment["name"] == "other-exp" and experiment["run_name"] == "r2"
    assert experiment["snapshot"]["command"] == ["python", "eval.py"]
    assert args.cpu == "4000m"


def test_without_from_run_the_usual_defaults_apply(world: dict[str, Any]) -> None:
    args = submit_args(world, "--no-snapshot")
    command, experiment = prepare_submission(args, ["true"])
    assert experiment is None and command == ["true"]
    assert (args.cpu, args.memory, args.tasks, args.priority, args.gang) == (
        "1",
        "1Gi",
        (1, 1),
        0,
        True,
    )


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--from-run", "nothex"], "--from-run"),
        (["--from-run", "0" * 32], "--from-run"),
        (["--run-name", "x"], "--run-name"),
        (["--experiment", " "], "--experiment"),
    ],
)
def test_submit_tracking_options_errors(
    world: dict[str, Any], capsys: pytest.CaptureFixture[str], argv: list[str], field: str
) -> None:
    served: Served = world["served"]
    code = main(["job", "submit", "--server", served.url, "--token", ANA, *argv, "--", "true"])
    assert code == 2 and f"(field: {field})" in capsys.readouterr().err


def test_from_run_of_a_run_without_job_tags(
    world: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    served: Served = world["served"]
    code = main(
        [
            "job",
            "submit",
            "--server",
            served.url,
            "--token",
            ANA,
            "--from-run",
            world["runs"]["slow"],
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "not recorded from a cplat job" in err and "--from-run" in err
