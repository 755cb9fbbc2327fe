"""``cplat hpo``: hyperparameter studies whose trials run as jobs on a cplat service.

``create`` sends a study (its space file, metric, sampler, pruner, budget and the trial's
job) to ``POST /v1/studies``; ``list``, ``show`` and ``stop`` read and stop studies;
``show`` also writes the optimisation history and the parameter importances as PNGs (Optuna's
own matplotlib plots, drawn from the trials the service returns); ``register-best`` registers
the best trial's logged model in the model registry. Errors print one line on stderr, as the
``cplat job`` verbs do.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cplat.cli.jobs import (
    _client,
    _console,
    _guarded,
    _print_json,
    connection_options,
    parse_cpu,
    parse_duration,
    parse_env,
    parse_gpu_share,
    parse_memory,
)
from cplat.client import ApiError, Client
from cplat.errors import InputError
from cplat.ml.hpo.space import load_space

__all__ = ["add_hpo_commands", "study_from_answer"]

_MLFLOW = "/api/2.0/mlflow"


def _cmd_create(args: argparse.Namespace) -> int:
    command = list(args.trial_argv)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise InputError(
            "give the training command after --, as in: -- python train.py", field="command"
        )
    try:
        space = load_space(args.space)
    except InputError as exc:
        # The one-line error shows the message and field: put the file in the message.
        raise InputError(f"{args.space}: {exc.message}", field=exc.field) from None
    gpu_milli = 1000 if args.gpu_share is None else parse_gpu_share(args.gpu_share)
    num_gpu = args.gpus if args.gpus is not None else (0 if args.gpu_share is None else 1)
    resources: dict[str, Any] = {
        "cpu_milli": parse_cpu(args.cpu),
        "memory_mib": parse_memory(args.memory),
        "num_gpu": num_gpu,
        "gpu_milli": gpu_milli,
    }
    if args.gpu_model:
        resources["gpu_models"] = list(args.gpu_model)
    job: dict[str, Any] = {
        "command": command,
        "tasks": {"count": 1, "resources": resources},
        "priority": args.priority,
        "env": parse_env(args.env or ()),
    }
    if args.max_runtime is not None:
        job["max_runtime"] = parse_duration(args.max_runtime)
    if args.workdir:
        job["workdir"] = args.workdir
    if args.max_restarts:
        job["on_failure"], job["max_restarts"] = "restart", args.max_restarts
    body: dict[str, Any] = {
        "name": args.name,
        "space": space.to_dict(),
        "metric": args.metric,
        "direction": args.direction,
        "sampler": args.sampler,
        "pruner": args.pruner,
        "n_trials": args.trials,
        "parallel": args.parallel,
        "job": job,
    }
    for key in ("project", "seed", "experiment"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    out = _client(args).request("POST", "/v1/studies", body=body)
    if args.json:
        _print_json(out)
    else:
        print(
            f"created study {out['name']}: {out['n_trials']} trials, {out['parallel']} at a "
            f"time, {out['sampler']} sampler, {out['pruner']} pruner"
        )
    return 0


def _query(args: argparse.Namespace) -> dict[str, Any]:
    return {"project": args.project} if args.project else {}


def _cmd_list(args: argparse.Namespace) -> int:
    out = _client(args).request("GET", "/v1/studies", query=_query(args))
    if args.json:
        _print_json(out)
        return 0
    from rich.table import Table

    table = Table(box=None)
    for col in ("PROJECT", "NAME", "STATE", "TRIALS", "METRIC", "BEST"):
        table.add_column(col)
    for s in out["studies"]:
        told = sum(n for k, n in s["counts"].items() if k != "RUNNING")
        best = s["best"]
        table.add_row(
            s["project"],
            s["name"],
            s["state"],
            f"{told}/{s['n_trials']}",
            f"{s['metric']} ({s['direction'][:3]})",
            "-" if best is None else f"{best['value']:.6g} (#{best['number']})",
        )
    _console().print(table)
    return 0


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "-" if value is None else str(value)


def study_from_answer(out: dict[str, Any]) -> Any:
    """Return an in-memory Optuna study holding the told trials of a ``GET`` answer.

    Optuna's plots take a study; the service's trials are rebuilt into one with the
    distributions of the study's space.
    """
    import optuna

    from cplat.ml.hpo.space import parse_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = parse_space(out["space"]).distributions()
    study = optuna.create_study(direction=out["direction"], study_name=out["name"])
    states = optuna.trial.TrialState
    for t in out["trials"]:
        if t["state"] not in ("COMPLETE", "PRUNED", "FAIL"):
            continue
        study.add_trial(
            optuna.trial.create_trial(
                params=t["params"],
                distributions={k: dists[k] for k in t["params"] if k in dists},
                value=t["value"] if t["state"] == "COMPLETE" else None,
                state=states[t["state"]],
                intermediate_values={int(k): v for k, v in t["intermediate"].items()},
            )
        )
    return study


def _plots(out: dict[str, Any], folder: Path) -> list[str]:
    """Write the history and importance PNGs; return what was written or why not."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as oplt

    folder.mkdir(parents=True, exist_ok=True)
    # Optuna marks its matplotlib plots experimental; users asked for them by name.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = study_from_answer(out)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    notes: list[str] = []
    if not complete:
        return ["no plots: no trial has completed yet"]
    history = folder / f"{out['name']}-history.png"
    oplt.plot_optimization_history(study, target_name=out["metric"])
    fig = plt.gcf()
    fig.savefig(history, dpi=120, bbox_inches="tight")
    plt.close(fig)
    notes.append(f"wrote {history}")
    importance = folder / f"{out['name']}-importance.png"
    if len(complete) < 2 or len(out["space"]["params"]) < 1:
        notes.append("no importance plot: it needs two completed trials")
        return notes
    try:
        oplt.plot_param_importances(study, target_name=out["metric"])
    except (RuntimeError, ValueError) as exc:
        # Optuna refuses when every completed trial has the same parameters.
        notes.append(f"no importance plot: {exc}")
        return notes
    fig = plt.gcf()
    fig.savefig(importance, dpi=120, bbox_inches="tight")
    plt.close(fig)
    notes.append(f"wrote {importance}")
    return notes


def _cmd_show(args: argparse.Namespace) -> int:
    out = _client(args).request(
        "GET", f"/v1/studies/{quote(args.name, safe='')}", query=_query(args)
    )
    if args.json:
        _print_json(out)
    else:
        from rich.table import Table

        console = _console()
        counts = ", ".join(f"{n} {k.lower()}" for k, n in sorted(out["counts"].items()))
        console.print(
            f"study {out['name']} ({out['project']}): {out['state']}; {out['sampler']} "
            f"sampler, {out['pruner']} pruner; {out['metric']} ({out['direction']}); "
            f"trials: {counts or 'none yet'} of {out['n_trials']}",
            markup=False,
        )
        names = list(out["space"]["params"])
        table = Table(box=None)
        for col in ("#", "STATE", *names, out["metric"].upper(), "STEP", "JOB"):
            table.add_column(col)
        for t in out["trials"]:
            value = t["value"] if t["value"] is not None else t["last_value"]
            table.add_row(
                str(t["number"]),
                t["state"],
                *(_fmt(t["params"].get(n)) for n in names),
                _fmt(value),
                _fmt(t["last_step"]),
                _fmt(t["job_id"]),
            )
        console.print(table)
        best = out["best"]
        if best is None:
            console.print("best: none yet")
        else:
            params = ", ".join(f"{k}={_fmt(v)}" for k, v in best["params"].items())
            console.print(
                f"best: trial {best['number']}, {out['metric']} = {best['value']:.6g} ({params})",
                markup=False,
            )
    if not args.no_plots:
        for note in _plots(out, args.plot_dir):
            print(note)
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    out = _client(args).request(
        "DELETE", f"/v1/studies/{quote(args.name, safe='')}", query=_query(args)
    )
    if args.json:
        _print_json(out)
    else:
        print(f"study {out['name']}: {out['state']}")
    return 0


def _registered(client: Client, name: str) -> None:
    """Create the registered model ``name`` unless it exists."""
    try:
        client.request("GET", f"{_MLFLOW}/registered-models/get", query={"name": name})
    except ApiError as exc:
        if exc.status != 404:
            raise
        client.request("POST", f"{_MLFLOW}/registered-models/create", body={"name": name})


def _cmd_register_best(args: argparse.Namespace) -> int:
    client = _client(args)
    out = client.request("GET", f"/v1/studies/{quote(args.name, safe='')}", query=_query(args))
    best = out.get("best")
    if not best or not best.get("run_id"):
        raise InputError(f"study {args.name} has no completed trial yet", field="NAME")
    run_id = best["run_id"]
    run = client.request("GET", f"{_MLFLOW}/runs/get", query={"run_id": run_id})["run"]
    outputs = (run.get("outputs") or {}).get("model_outputs") or []
    body: dict[str, Any] = {"name": args.model, "run_id": run_id}
    if outputs:
        # The 3.x client logs a model as a logged model the run outputs: register that.
        model_id = outputs[-1]["model_id"]
        body.update(source=f"models:/{model_id}", model_id=model_id)
    else:
        body["source"] = f"runs:/{run_id}/{args.artifact_path}"
    _registered(client, args.model)
    mv = client.request("POST", f"{_MLFLOW}/model-versions/create", body=body)["model_version"]
    if args.json:
        _print_json(mv)
    else:
        print(
            f"registered {args.model} version {mv['version']} from trial {best['number']} "
            f"({out['metric']} = {best['value']:.6g}, run {run_id})"
        )
    return 0


def add_hpo_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``hpo`` and its verbs (create, list, show, stop, register-best) to ``cplat``."""
    hpo = sub.add_parser(
        "hpo",
        help="hyperparameter studies whose trials run as jobs",
        description="Create, inspect and stop hyperparameter studies on a running cplat "
        "service; see docs/hpo.md.",
    )
    verbs = hpo.add_subparsers(dest="hpo_command", required=True, metavar="VERB")
    common = connection_options()
    common.add_argument("--project", help="project (default: the token's)")
    common.add_argument("--json", action="store_true", help="print JSON")

    create = verbs.add_parser(
        "create",
        parents=[common],
        help="create a study",
        description="Create a study; the training command follows --.",
        epilog="example:\n  cplat hpo create --name lr-search --space space.toml --metric "
        "val_loss \\\n      --sampler tpe --pruner hyperband --trials 64 --parallel 8 "
        "--gpus 1 --gpu-share 0.25 \\\n      -- python train.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    create.add_argument("--name", required=True, help="study name")
    create.add_argument("--space", required=True, type=Path, metavar="FILE", help="space TOML")
    create.add_argument("--metric", required=True, help="the metric trials log, with steps")
    create.add_argument("--direction", choices=("minimize", "maximize"), default="minimize")
    create.add_argument(
        "--sampler", default="tpe", help="grid, random, tpe, gp or cmaes (default tpe)"
    )
    create.add_argument(
        "--pruner",
        default="median",
        help="median, successive-halving, hyperband or none (default median)",
    )
    create.add_argument("--trials", type=int, default=16, metavar="N", help="budget (default 16)")
    create.add_argument(
        "--parallel", type=int, default=1, metavar="N", help="trials at once (default 1)"
    )
    create.add_argument("--seed", type=int, help="seed of the sampler")
    create.add_argument("--experiment", help="tracking experiment (default: the study name)")
    create.add_argument("--cpu", default="1", metavar="CORES", help="cores per trial (default 1)")
    create.add_argument("--memory", default="1Gi", metavar="SIZE", help="memory per trial")
    create.add_argument("--gpus", type=int, metavar="N", help="GPUs per trial (default 0)")
    create.add_argument(
        "--gpu-share", metavar="FRACTION", help="share of one GPU per trial, like 0.25"
    )
    create.add_argument("--gpu-model", action="append", metavar="MODEL", help="GPU model")
    create.add_argument("--priority", type=int, default=0, help="-1000 to 1000 (default 0)")
    create.add_argument("--max-runtime", metavar="DURATION", help="per trial: 30m, 2h")
    create.add_argument("--env", action="append", metavar="NAME=VALUE", help="(repeatable)")
    create.add_argument("--workdir", metavar="DIR", help="working directory of the trials")
    create.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        metavar="N",
        help="restart a failed trial's job up to N times (same trial, same parameters)",
    )
    create.add_argument("trial_argv", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    create.set_defaults(func=_guarded(_cmd_create))

    lst = verbs.add_parser("list", parents=[common], help="list studies")
    lst.set_defaults(func=_guarded(_cmd_list))

    show = verbs.add_parser(
        "show",
        parents=[common],
        help="a study's trials and best; writes the history and importance plots",
    )
    show.add_argument("name", metavar="NAME")
    show.add_argument(
        "--plot-dir", type=Path, default=Path("."), metavar="DIR", help="where the PNGs go"
    )
    show.add_argument("--no-plots", action="store_true", help="write no PNG")
    show.set_defaults(func=_guarded(_cmd_show))

    stop = verbs.add_parser("stop", parents=[common], help="stop a study")
    stop.add_argument("name", metavar="NAME")
    stop.set_defaults(func=_guarded(_cmd_stop))

    reg = verbs.add_parser(
        "register-best",
        parents=[common],
        help="register the best trial's logged model in the model registry",
    )
    reg.add_argument("name", metavar="NAME")
    reg.add_argument("--model", required=True, metavar="MODEL", help="registered model name")
    reg.add_argument(
        "--artifact-path",
        default="model",
        metavar="PATH",
        help="the model's folder in the run's artifacts, when the run has no logged model "
        "(default: model)",
    )
    reg.set_defaults(func=_guarded(_cmd_register_best))


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cplat hpo`` alone (tests)."""
    parser = argparse.ArgumentParser(prog="cplat")
    add_hpo_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))
