"""``cplat experiments`` and ``cplat models``: runs and registered models on a cplat service.

The verbs read the service's MLflow-compatible REST API (``/api/2.0/mlflow/...``) with the
standard library through :class:`cplat.client.Client`; the ``mlflow`` package is not needed.
``--server`` and ``--token`` default to ``CPLAT_SERVER`` and ``CPLAT_TOKEN``. Failures print
one line, ``error: <message> (field: <option>)``, and exit with 2 for bad input or a request
the service refused, 1 for an unreachable service or a server error.

This module also holds what ``cplat job submit`` does for tracking: ``--experiment`` (the run
of the job, with an environment snapshot) and ``--from-run`` (submit a recorded run again).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cplat.cli.jobs import _client, _guarded, connection_options
from cplat.client import ApiError, Client
from cplat.errors import InputError

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "MlflowApi",
    "add_submit_options",
    "add_tracking_commands",
    "describe_run",
    "prepare_submission",
]

API = "/api/2.0/mlflow"
#: Runs a ``compare`` may put side by side, and points fetched per metric history page.
MAX_COMPARE = 20
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
#: Metric and param columns ``experiments runs`` shows at most (the rest: ``--json``).
_MAX_KEY_COLUMNS = 6


# --- the REST client -----------------------------------------------------------------------------


class MlflowApi:
    """The MLflow-compatible endpoints of a cplat service, as plain JSON.

    Parameters
    ----------
    client
        A :class:`cplat.client.Client` (server, token, TLS).
    """

    def __init__(self, client: Client) -> None:
        self.client = client

    def get(self, path: str, **query: object) -> dict[str, Any]:
        """``GET`` an endpoint under ``/api/2.0/mlflow``."""
        data = self.client.request("GET", API + path, query=query)
        return data if isinstance(data, dict) else {}

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """``POST`` a JSON body to an endpoint under ``/api/2.0/mlflow``."""
        data = self.client.request("POST", API + path, body=body)
        return data if isinstance(data, dict) else {}

    def experiment(self, name: str) -> dict[str, Any]:
        """Return an experiment of the token's project by name (404 ``ApiError`` if none)."""
        return dict(self.get("/experiments/get-by-name", experiment_name=name)["experiment"])

    def experiment_by_id(self, experiment_id: str) -> dict[str, Any]:
        """Return an experiment by id."""
        return dict(self.get("/experiments/get", experiment_id=experiment_id)["experiment"])

    def experiments(self, deleted: bool = False, limit: int | None = None) -> list[dict[str, Any]]:
        """Return the experiments of the token's project (every page, up to ``limit``)."""
        body: dict[str, Any] = {"view_type": "ALL" if deleted else "ACTIVE_ONLY"}
        return list(self._pages("/experiments/search", body, "experiments", limit))

    def runs(
        self,
        experiment_ids: Sequence[str],
        filter_string: str = "",
        order_by: Sequence[str] = (),
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Search runs (every page, up to ``limit``)."""
        body: dict[str, Any] = {"experiment_ids": list(experiment_ids), "order_by": list(order_by)}
        if filter_string:
            body["filter"] = filter_string
        return list(self._pages("/runs/search", body, "runs", limit))

    def run(self, run_id: str) -> dict[str, Any]:
        """Return one run."""
        return dict(self.get("/runs/get", run_id=run_id)["run"])

    def history(self, run_id: str, key: str) -> list[dict[str, Any]]:
        """Return every point of a run's metric."""
        out: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = self.get("/metrics/get-history", run_id=run_id, metric_key=key, page_token=token)
            out += page.get("metrics", [])
            token = page.get("next_page_token")
            if not token:
                return out

    def models(self, filter_string: str = "", limit: int | None = None) -> list[dict[str, Any]]:
        """Return registered models (every page, up to ``limit``)."""
        out: list[dict[str, Any]] = []
        token: str | None = None
        while limit is None or len(out) < limit:
            page = self.get(
                "/registered-models/search",
                filter=filter_string or None,
                max_results=100,
                page_token=token,
            )
            out += page.get("registered_models", [])
            token = page.get("next_page_token")
            if not token:
                break
        return out[:limit] if limit is not None else out

    def model(self, name: str) -> dict[str, Any]:
        """Return a registered model."""
        return dict(self.get("/registered-models/get", name=name)["registered_model"])

    def versions(self, name: str) -> list[dict[str, Any]]:
        """Return every version of a registered model."""
        quoted = name.replace("\\", "\\\\").replace("'", "\\'")
        page = self.get("/model-versions/search", filter=f"name='{quoted}'", max_results=10_000)
        return list(page.get("model_versions", []))

    def _pages(
        self, path: str, body: dict[str, Any], key: str, limit: int | None
    ) -> Iterator[dict[str, Any]]:
        token: str | None = None
        seen = 0
        while True:
            page_size = 1000 if limit is None else max(1, min(1000, limit - seen))
            page = self.post(path, {**body, "max_results": page_size, "page_token": token})
            for item in page.get(key, []):
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield item
            token = page.get("next_page_token")
            if not token or (limit is not None and seen >= limit):
                return


# --- formatting ---------------------------------------------------------------------------------


def _console() -> Console:
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160)


def _time(ms: Any) -> str:
    if not isinstance(ms, (int, str)) or not str(ms).isdigit() or int(ms) == 0:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(ms) / 1000))


def _duration(info: dict[str, Any]) -> str:
    start, end = info.get("start_time"), info.get("end_time")
    try:
        seconds = (int(end) - int(start)) / 1000 if end and start else None
    except (TypeError, ValueError):
        seconds = None
    if seconds is None or seconds < 0:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    return f"{seconds / 60:.1f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h"


def _number(value: Any) -> str:
    if isinstance(value, str):
        return value  # "NaN", "Infinity" as protobuf JSON writes them
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _pairs(run: dict[str, Any], kind: str) -> dict[str, Any]:
    data = run.get("data") or {}
    return {p["key"]: p.get("value") for p in data.get(kind) or []}


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2))


def _escape(text: Any) -> str:
    from rich.markup import escape

    return escape(str(text))


# --- verbs ---------------------------------------------------------------------------------------


def _api(args: argparse.Namespace) -> MlflowApi:
    return MlflowApi(_client(args))


def _limit(value: int | None) -> int | None:
    if value is not None and value <= 0:
        raise InputError("expected a positive number", field="--limit")
    return value


def _cmd_experiments_list(args: argparse.Namespace) -> int:
    found = _api(args).experiments(deleted=args.all, limit=_limit(args.limit))
    if args.json:
        _print_json(found)
        return 0
    from rich.table import Table

    console = _console()
    if not found:
        console.print("no experiments")
        return 0
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("ID", "NAME", "STAGE", "CREATED", "UPDATED"):
        table.add_column(column, justify="right" if column == "ID" else "left")
    for exp in found:
        table.add_row(
            _escape(exp.get("experiment_id")),
            _escape(exp.get("name")),
            _escape(exp.get("lifecycle_stage")),
            _time(exp.get("creation_time")),
            _time(exp.get("last_update_time")),
        )
    console.print(table)
    return 0


def _cmd_experiments_show(args: argparse.Namespace) -> int:
    api = _api(args)
    exp = api.experiment(args.name)
    runs = api.runs([exp["experiment_id"]], limit=None)
    if args.json:
        _print_json({"experiment": exp, "runs": len(runs)})
        return 0
    by_status: dict[str, int] = {}
    for run in runs:
        status = str((run.get("info") or {}).get("status", "?"))
        by_status[status] = by_status.get(status, 0) + 1
    rows = [
        ("experiment", f"{exp['experiment_id']} {exp['name']}"),
        ("stage", exp.get("lifecycle_stage", "-")),
        ("artifacts", exp.get("artifact_location", "-")),
        ("created", _time(exp.get("creation_time"))),
        ("updated", _time(exp.get("last_update_time"))),
        ("runs", ", ".join(f"{n} {s}" for s, n in sorted(by_status.items())) or "0"),
    ]
    rows += [(f"tag {t['key']}", t.get("value", "")) for t in exp.get("tags") or []]
    for key, value in rows:
        print(f"{key:<12} {value}")
    return 0


def _cmd_experiments_runs(args: argparse.Namespace) -> int:
    api = _api(args)
    exp = api.experiment(args.name)
    try:
        runs = api.runs(
            [exp["experiment_id"]], args.filter or "", args.order_by or (), _limit(args.limit)
        )
    except ApiError as exc:
        if exc.status == 400:  # the filter or order is what the service could not read
            which = "--order-by" if "order" in exc.message.lower() else "--filter"
            raise InputError(exc.message, field=which) from None
        raise
    if args.json:
        _print_json(runs)
        return 0
    from rich.table import Table

    console = _console()
    if not runs:
        console.print("no runs")
        return 0
    metric_keys = sorted({k for r in runs for k in _pairs(r, "metrics")})
    param_keys = sorted({k for r in runs for k in _pairs(r, "params")})
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("RUN", "NAME", "STATUS", "JOB", "STARTED", "TIME"):
        table.add_column(column)
    for key in param_keys[:_MAX_KEY_COLUMNS]:
        table.add_column(_escape(f"params.{key}"))
    for key in metric_keys[:_MAX_KEY_COLUMNS]:
        table.add_column(_escape(f"metrics.{key}"), justify="right")
    for run in runs:
        info = run.get("info") or {}
        tags, params, metrics = _pairs(run, "tags"), _pairs(run, "params"), _pairs(run, "metrics")
        table.add_row(
            _escape(info.get("run_id", "")),
            _escape(info.get("run_name", "")),
            _escape(info.get("status", "")),
            _escape(tags.get("cplat.job_id", "-")),
            _time(info.get("start_time")),
            _duration(info),
            *[_escape(params.get(k, "-")) for k in param_keys[:_MAX_KEY_COLUMNS]],
            *[_number(metrics[k]) if k in metrics else "-" for k in metric_keys[:_MAX_KEY_COLUMNS]],
        )
    console.print(table)
    hidden = max(0, len(param_keys) - _MAX_KEY_COLUMNS) + max(
        0, len(metric_keys) - _MAX_KEY_COLUMNS
    )
    if hidden:
        console.print(f"({hidden} more param/metric columns: see --json or compare)")
    return 0


def _check_run_ids(ids: Sequence[str]) -> list[str]:
    if not ids:
        raise InputError("give at least one run id", field="RUN_ID")
    if len(ids) > MAX_COMPARE:
        raise InputError(f"compare at most {MAX_COMPARE} runs", field="RUN_ID")
    for run_id in ids:
        if not _RUN_ID.match(run_id):
            raise InputError(f"{run_id!r} is not a run id (32 hex digits)", field="RUN_ID")
    return list(dict.fromkeys(ids))


def _cmd_compare(args: argparse.Namespace) -> int:
    ids = _check_run_ids(args.run_ids)
    metrics = list(dict.fromkeys(args.metric or ()))
    if args.png and not metrics:
        raise InputError("--png plots a metric: name it with --metric", field="--metric")
    if args.png:
        out = Path(args.png)
        if out.suffix.lower() != ".png":
            raise InputError(f"expected a .png file name, got {args.png!r}", field="--png")
        if not out.parent.is_dir():
            raise InputError(f"no folder {str(out.parent)!r} to write into", field="--png")
    api = _api(args)
    runs = [api.run(run_id) for run_id in ids]
    histories: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for key in metrics:
        histories[key] = {run_id: api.history(run_id, key) for run_id in ids}
        if not any(histories[key].values()):
            raise InputError(f"none of the runs has a metric {key!r}", field="--metric")
    if args.json:
        _print_json({"runs": runs, "history": histories})
    else:
        _compare_table(runs)
    if args.png:
        _plot(runs, histories, Path(args.png))
        if not args.json:
            print(f"wrote {args.png}")
    return 0


def _compare_table(runs: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("")
    for run in runs:
        info = run.get("info") or {}
        table.add_column(_escape(f"{info.get('run_name', '')}\n{str(info.get('run_id', ''))[:8]}"))
    infos = [run.get("info") or {} for run in runs]
    tags = [_pairs(run, "tags") for run in runs]
    params = [_pairs(run, "params") for run in runs]
    metrics = [_pairs(run, "metrics") for run in runs]
    table.add_row("status", *[_escape(i.get("status", "")) for i in infos])
    table.add_row("experiment", *[_escape(i.get("experiment_id", "")) for i in infos])
    table.add_row("job", *[_escape(t.get("cplat.job_id", "-")) for t in tags])
    table.add_row("time", *[_duration(i) for i in infos])
    for key in sorted({k for p in params for k in p}):
        values = [p.get(key, "-") for p in params]
        # Rows whose values differ are what a comparison is for: bold them.
        style = "bold" if len(set(map(str, values))) > 1 else None
        table.add_row(_escape(f"params.{key}"), *[_escape(v) for v in values], style=style)
    for key in sorted({k for m in metrics for k in m}):
        table.add_row(
            _escape(f"metrics.{key}"), *[_number(m[key]) if key in m else "-" for m in metrics]
        )
    _console().print(table)


def _plot(
    runs: list[dict[str, Any]], histories: dict[str, dict[str, list[dict[str, Any]]]], out: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = {
        (run.get("info") or {}).get("run_id", ""): (run.get("info") or {}).get("run_name", "")
        for run in runs
    }
    fig, axes = plt.subplots(len(histories), 1, figsize=(8, 3.6 * len(histories)), squeeze=False)
    for ax, (key, by_run) in zip(axes[:, 0], histories.items(), strict=True):
        for run_id, points in by_run.items():
            if not points:
                continue
            points = sorted(
                points, key=lambda p: (int(p.get("step", 0)), int(p.get("timestamp", 0)))
            )
            steps = [int(p.get("step", 0)) for p in points]
            values = [_as_float(p.get("value")) for p in points]
            label = f"{names.get(run_id) or run_id[:8]} ({run_id[:8]})"
            ax.plot(steps, values, marker="." if len(points) < 50 else None, label=label)
        ax.set_title(f"{key} over steps")
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _as_float(value: Any) -> float:
    try:
        return float(value)  # also "NaN" and "Infinity"
    except (TypeError, ValueError):
        return math.nan


def _aliases(item: dict[str, Any]) -> str:
    found = item.get("aliases") or []
    out = []
    for a in found:
        out.append(f"{a['alias']}->v{a['version']}" if isinstance(a, dict) else str(a))
    return ", ".join(out) or "-"


def _cmd_models_list(args: argparse.Namespace) -> int:
    found = _api(args).models(args.filter or "", _limit(args.limit))
    if args.json:
        _print_json(found)
        return 0
    from rich.table import Table

    console = _console()
    if not found:
        console.print("no registered models")
        return 0
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("NAME", "LATEST", "ALIASES", "UPDATED", "DESCRIPTION"):
        table.add_column(column)
    for m in found:
        latest = [str(v.get("version")) for v in m.get("latest_versions") or []]
        table.add_row(
            _escape(m.get("name", "")),
            _escape(", ".join(f"v{v}" for v in latest) or "-"),
            _escape(_aliases(m)),
            _time(m.get("last_updated_timestamp")),
            _escape((m.get("description") or "")[:80]),
        )
    console.print(table)
    return 0


def _cmd_models_show(args: argparse.Namespace) -> int:
    api = _api(args)
    model = api.model(args.name)
    versions = sorted(api.versions(args.name), key=lambda v: int(v.get("version", 0)))
    if args.json:
        _print_json({"registered_model": model, "versions": versions})
        return 0
    rows = [
        ("model", model.get("name", "")),
        ("description", model.get("description") or "-"),
        ("aliases", _aliases(model)),
        ("created", _time(model.get("creation_timestamp"))),
        ("updated", _time(model.get("last_updated_timestamp"))),
    ]
    rows += [(f"tag {t['key']}", t.get("value", "")) for t in model.get("tags") or []]
    for key, value in rows:
        print(f"{key:<12} {value}")
    from rich.table import Table

    console = _console()
    if not versions:
        console.print("no versions")
        return 0
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("VERSION", "STAGE", "STATUS", "ALIASES", "RUN", "SOURCE", "CREATED"):
        table.add_column(column, justify="right" if column == "VERSION" else "left")
    for v in versions:
        table.add_row(
            _escape(v.get("version", "")),
            _escape(v.get("current_stage", "")),
            _escape(v.get("status", "")),
            _escape(", ".join(str(a) for a in v.get("aliases") or []) or "-"),
            _escape(v.get("run_id") or "-"),
            _escape(v.get("source", "")),
            _time(v.get("creation_timestamp")),
        )
    console.print(table)
    return 0


def _common() -> argparse.ArgumentParser:
    common = connection_options()
    common.add_argument("--json", action="store_true", help="print JSON")
    return common


def add_tracking_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``experiments`` and ``models`` and their verbs to ``cplat``.

    Parameters
    ----------
    sub
        The ``cplat`` parser's subparsers. Each verb sets ``func``, which returns the exit code
        and reports its own errors (one line on stderr).
    """
    common = _common()
    exps = sub.add_parser(
        "experiments",
        help="list, show and compare experiment runs on a cplat service",
        description="Experiments and runs of the token's project, read from the service's "
        "MLflow-compatible API.",
    )
    verbs = exps.add_subparsers(dest="experiments_command", required=True, metavar="VERB")
    listing = verbs.add_parser("list", parents=[common], help="list experiments")
    listing.add_argument("--all", action="store_true", help="also deleted experiments")
    listing.add_argument("--limit", type=int, metavar="N", help="show at most N")
    listing.set_defaults(func=_guarded(_cmd_experiments_list))
    show = verbs.add_parser("show", parents=[common], help="show an experiment")
    show.add_argument("name", metavar="NAME")
    show.set_defaults(func=_guarded(_cmd_experiments_show))
    runs = verbs.add_parser(
        "runs",
        parents=[common],
        help="list an experiment's runs",
        epilog='example:\n  cplat experiments runs mnist --filter "metrics.acc > 0.9 and '
        "params.lr = '0.01'\" --order-by 'metrics.acc DESC'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    runs.add_argument("name", metavar="NAME")
    runs.add_argument("--filter", metavar="EXPR", help="MLflow search filter")
    runs.add_argument(
        "--order-by",
        action="append",
        metavar="KEY",
        help="order, like 'metrics.acc DESC' (repeatable)",
    )
    runs.add_argument("--limit", type=int, metavar="N", help="show at most N runs")
    runs.set_defaults(func=_guarded(_cmd_experiments_runs))
    compare = verbs.add_parser(
        "compare",
        parents=[common],
        help="compare runs side by side; plot a metric over steps",
        epilog="example:\n  cplat experiments compare 3f2a... 9bc1... --metric loss --png loss.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare.add_argument("run_ids", nargs="+", metavar="RUN_ID")
    compare.add_argument(
        "--metric", action="append", metavar="KEY", help="metric to fetch over steps (repeatable)"
    )
    compare.add_argument("--png", metavar="FILE", help="write a plot of the --metric histories")
    compare.set_defaults(func=_guarded(_cmd_compare))

    models = sub.add_parser(
        "models",
        help="list and show registered models on a cplat service",
        description="Registered models of the token's project and their versions.",
    )
    mverbs = models.add_subparsers(dest="models_command", required=True, metavar="VERB")
    mlist = mverbs.add_parser("list", parents=[common], help="list registered models")
    mlist.add_argument("--filter", metavar="EXPR", help="MLflow filter, like \"name LIKE 'fr%%'\"")
    mlist.add_argument("--limit", type=int, metavar="N", help="show at most N")
    mlist.set_defaults(func=_guarded(_cmd_models_list))
    mshow = mverbs.add_parser("show", parents=[common], help="show a model and its versions")
    mshow.add_argument("name", metavar="NAME")
    mshow.set_defaults(func=_guarded(_cmd_models_show))


# --- cplat job submit --experiment / --from-run -------------------------------------------

#: The ``cplat job submit`` options a recorded run can fill in, and the key each comes from.
_FROM_RUN_OPTIONS = (
    "name", "tasks", "cpu", "memory", "gpus", "gpu_share", "gpu_model", "priority",
    "max_runtime", "workdir", "on_failure", "max_restarts", "gang", "exclusive",
)  # fmt: skip
_UNSET = argparse.SUPPRESS  # argparse leaves a SUPPRESS default out: "not given"


def add_submit_options(submit: argparse.ArgumentParser) -> None:
    """Add ``--experiment``, ``--run-name``, ``--from-run`` and ``--no-snapshot`` to submit.

    Call it after the other options: it also marks which of them the command line gave, so
    that ``--from-run`` fills in only the others (see :func:`prepare_submission`).
    """
    group = submit.add_argument_group("experiment tracking")
    group.add_argument(
        "--experiment",
        metavar="NAME",
        help="record the job as a run of this experiment (created if missing); the tasks get "
        "MLFLOW_TRACKING_URI, MLFLOW_RUN_ID, MLFLOW_EXPERIMENT_ID and MLFLOW_TRACKING_TOKEN",
    )
    group.add_argument("--run-name", metavar="NAME", help="name of the run (default: random)")
    group.add_argument(
        "--from-run",
        metavar="RUN_ID",
        help="submit a recorded run again: its command, parameters and resources, "
        "overridden by the options given here (its experiment unless --experiment)",
    )
    group.add_argument(
        "--no-snapshot",
        dest="snapshot",
        action="store_false",
        help="do not record the environment (interpreter, pip freeze, git state, env names)",
    )
    defaults: dict[str, Any] = {}
    for action in submit._actions:
        if action.dest in _FROM_RUN_OPTIONS:
            default = action.default
            if isinstance(default, str) and action.type is not None and callable(action.type):
                default = action.type(default)
            defaults[action.dest] = default
            action.default = _UNSET
    submit.set_defaults(_submit_defaults=defaults)


def _recorded(run: dict[str, Any], key: str) -> Any:
    text = _pairs(run, "tags").get(key)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _from_run_values(run: dict[str, Any]) -> tuple[Any, dict[str, Any], list[str]]:
    """Return the recorded command, the submit options it fills, and the env names it had."""
    tags = _pairs(run, "tags")
    run_id = (run.get("info") or {}).get("run_id", "")
    command = _recorded(run, "cplat.command")
    tasks = _recorded(run, "cplat.resources")
    spec = _recorded(run, "cplat.job_spec")
    if tasks is None and spec is None and command is None:
        raise InputError(
            f"run {run_id} was not recorded from a cplat job (it has no cplat.command, "
            "cplat.resources or cplat.job_spec tag)",
            field="--from-run",
        )
    values: dict[str, Any] = {}
    if tags.get("cplat.job_name"):
        values["name"] = tags["cplat.job_name"]
    if isinstance(tasks, dict):
        count = int(tasks.get("count", 1))
        values["tasks"] = (int(tasks.get("min_count") or count), count)
        res = tasks.get("resources") or {}
        if "cpu_milli" in res:
            values["cpu"] = f"{int(res['cpu_milli'])}m"
        if "memory_mib" in res:
            values["memory"] = str(int(res["memory_mib"]))
        if "num_gpu" in res:
            values["gpus"] = int(res["num_gpu"])
        if int(res.get("gpu_milli", 1000)) < 1000:
            values["gpu_share"] = f"{int(res['gpu_milli']) / 1000:g}"
        if res.get("gpu_models"):
            values["gpu_model"] = [str(m) for m in res["gpu_models"]]
    env_names: list[str] = []
    if isinstance(spec, dict):
        for key in ("priority", "max_restarts"):
            if isinstance(spec.get(key), int):
                values[key] = spec[key]
        if isinstance(spec.get("max_runtime"), int):
            values["max_runtime"] = str(spec["max_runtime"])
        for key in ("workdir", "on_failure"):
            if isinstance(spec.get(key), str):
                values[key] = spec[key]
        for key in ("gang", "exclusive"):
            if isinstance(spec.get(key), bool):
                values[key] = spec[key]
        env_names = [str(n) for n in spec.get("env_names") or []]
    return command, values, env_names


def prepare_submission(
    args: argparse.Namespace, command: list[str], api: MlflowApi | None = None
) -> tuple[list[str], dict[str, Any] | None]:
    """Apply ``--from-run`` and build the ``experiment`` field of a ``cplat job submit``.

    Options the command line left out are filled from the recorded run (with ``--from-run``)
    or their usual defaults; a command given after ``--`` replaces the recorded one.

    Parameters
    ----------
    args
        The parsed submit options (with :func:`add_submit_options`).
    command
        The command given after ``--`` (may be empty with ``--from-run``).
    api
        The service's MLflow API (default: from ``args``' server, token and CA).

    Returns
    -------
    tuple
        The command to run, and the submission's ``experiment`` field (None: no run).

    Raises
    ------
    InputError
        Naming the option at fault (``--from-run``, ``--experiment``, ``--run-name``).
    """
    defaults: dict[str, Any] = getattr(args, "_submit_defaults", {})
    recorded: dict[str, Any] = {}
    run_cmd: Any = None
    experiment_name = args.experiment
    from_run = args.from_run
    if experiment_name is not None and not experiment_name.strip():
        raise InputError("the experiment name must not be empty", field="--experiment")
    if from_run is not None:
        if not _RUN_ID.match(from_run):
            raise InputError(f"{from_run!r} is not a run id (32 hex digits)", field="--from-run")
        api = api or _api(args)
        try:
            run = api.run(from_run)
        except ApiError as exc:
            if exc.status == 404:
                raise InputError(f"no run {from_run} in your project", field="--from-run") from None
            raise
        run_cmd, recorded, env_names = _from_run_values(run)
        if experiment_name is None:
            experiment_name = api.experiment_by_id(str(run["info"]["experiment_id"]))["name"]
        given = {e.partition("=")[0] for e in (getattr(args, "env", None) or [])}
        missing_env = [n for n in env_names if n not in given]
        if missing_env:
            print(
                f"note: run {from_run} ran with env {', '.join(missing_env)}; values are never "
                "recorded: give them again with --env NAME=VALUE",
                file=sys.stderr,
            )
    elif args.run_name is not None and experiment_name is None:
        raise InputError("--run-name needs --experiment or --from-run", field="--run-name")
    for dest in _FROM_RUN_OPTIONS:
        if dest in defaults and not hasattr(args, dest):
            setattr(args, dest, recorded.get(dest, defaults[dest]))
    final = command
    if not command and run_cmd is not None:
        if isinstance(run_cmd, str) and run_cmd:
            # The service runs a command given as one string with /bin/sh -c: so does this.
            final = ["/bin/sh", "-c", run_cmd]
        elif isinstance(run_cmd, list) and all(isinstance(a, str) for a in run_cmd):
            final = list(run_cmd)
        else:
            raise InputError(
                f"run {from_run} has a malformed cplat.command tag", field="--from-run"
            )
    elif not command and from_run is not None:
        raise InputError(
            f"run {from_run} has no recorded command (too long for a tag?); give it after --",
            field="--from-run",
        )
    if experiment_name is None:
        return final, None
    field: dict[str, Any] = {"name": experiment_name}
    if args.run_name:
        field["run_name"] = args.run_name
    if from_run:
        field["from_run"] = from_run
    if getattr(args, "snapshot", True):
        from cplat.ml.tracking.snapshot import take_snapshot

        field["snapshot"] = take_snapshot(final, cwd=Path.cwd())
    return final, field


def describe_run(job: Mapping[str, Any]) -> str | None:
    """Return a line naming a submitted job's run (None for a job without one)."""
    link = job.get("tracking")
    if not isinstance(link, dict) or not link.get("run_id"):
        return None
    return f"run {link['run_id']} of experiment {link.get('experiment', '?')!r}"
