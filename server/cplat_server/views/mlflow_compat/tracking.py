"""MLflow tracking endpoints: experiments, runs, metrics, datasets and logged models.

Roles: viewer reads, member writes (creates, logs, updates, tags), admin deletes and restores.
Experiments are created in the caller's token's project; experiment ``0`` (where MLflow clients
log when no experiment is chosen) is that project's ``Default`` experiment. A run's ``user_id``
is the token's user, whatever the client claims.
"""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web

from cplat.ml.tracking import DatasetIn, Experiment, MetricIn, Run
from cplat.ml.tracking.records import ACTIVE, DELETED, LoggedModel, metric_value_json
from cplat.ml.tracking.store import MAX_BATCH_METRICS, MAX_BATCH_PARAMS_TAGS, MAX_TAG_VALUE
from cplat_server.views.mlflow_compat.common import (
    Call,
    MlflowError,
    as_float,
    as_int,
    endpoint,
    invalid,
    missing,
    page,
    require,
)

_LOG_MODEL_TAG = "mlflow.log-model.history"


# --- lookups with access checks ---------------------------------------------------------------


async def experiment(call: Call, experiment_id: str, role: str) -> Experiment:
    """Return an experiment the caller may act on with ``role`` (``0``: the project default)."""
    if experiment_id == "0":
        exp = await call.store.default_experiment(call.who.project)
    else:
        found = await call.store.get_experiment(experiment_id)
        if found is None:
            raise missing(f"experiment {experiment_id!r}")
        exp = found
    require(call, exp.project, role, f"experiment {experiment_id!r}")
    call.target, call.project = f"experiment {exp.experiment_id}", exp.project
    return exp


async def run_for(call: Call, role: str, name: str = "run_id") -> Run:
    """Return the run named by ``run_id`` (or ``run_uuid``) if the caller may use it."""
    run_id = call.text(name) or call.text("run_uuid")
    if not run_id:
        raise invalid(f"missing value for required parameter '{name}'", name)
    owner = await call.store.run_owner(run_id)
    if owner is None:
        raise missing(f"run {run_id!r}")
    require(call, owner.project, role, f"run {run_id!r}")
    call.target, call.project = f"run {run_id}", owner.project
    run = await call.store.get_run(run_id)
    if run is None:
        raise missing(f"run {run_id!r}")
    return run


async def run_id_for(call: Call, role: str) -> str:
    """Check access to the run named by ``run_id`` and return its id (no data loaded)."""
    run_id = call.text("run_id") or call.text("run_uuid")
    if not run_id:
        raise invalid("missing value for required parameter 'run_id'", "run_id")
    owner = await call.store.run_owner(run_id)
    if owner is None:
        raise missing(f"run {run_id!r}")
    require(call, owner.project, role, f"run {run_id!r}")
    call.target, call.project = f"run {run_id}", owner.project
    return run_id


def _visible(call: Call) -> list[str] | None:
    return None if call.who.cluster_admin else [call.who.project]


async def _experiment_ids(call: Call, ids: list[str]) -> list[str]:
    # "0" is the caller's default experiment; the rest are filtered by project in the query.
    out = []
    for e in ids:
        if e == "0":
            out.append((await call.store.default_experiment(call.who.project)).experiment_id)
        else:
            out.append(e)
    return out


# --- experiments ------------------------------------------------------------------------------


@endpoint(write=True)
async def create_experiment(call: Call) -> dict[str, Any]:
    """Create an experiment in the caller's project."""
    require(call, call.who.project, "member", "experiments")
    name = call.text("name", required=True)
    location = call.text("artifact_location") or None
    if location is not None:
        # Files must go through the proxy, which checks access per experiment: a location
        # elsewhere would be outside both the proxy and the tenancy.
        raise invalid(
            "artifact_location cannot be chosen: artifacts are stored by the server "
            "(mlflow-artifacts:/<experiment_id>)",
            "artifact_location",
        )
    tags = dict(call.pairs("tags"))
    exp_id = await call.store.create_experiment(call.who.project, name, None, tags)
    call.target, call.project = f"experiment {exp_id}", call.who.project
    return {"experiment_id": exp_id}


@endpoint(write=False)
async def get_experiment(call: Call) -> dict[str, Any]:
    """Get an experiment by id."""
    exp = await experiment(call, call.text("experiment_id", required=True), "viewer")
    return {"experiment": exp.to_json()}


@endpoint(write=False)
async def get_experiment_by_name(call: Call) -> dict[str, Any]:
    """Get one of the caller's project's experiments by name."""
    name = call.text("experiment_name", required=True)
    require(call, call.who.project, "viewer", "experiments")
    exp = await call.store.get_experiment_by_name(call.who.project, name)
    if exp is None:
        raise missing(f"experiment {name!r}")
    return {"experiment": exp.to_json()}


@endpoint(write=False)
async def search_experiments(call: Call) -> dict[str, Any]:
    """Search the experiments the caller can see."""
    exps, token = await call.store.search_experiments(
        _visible(call),
        view_type=call.text("view_type") or None,
        order_by=call.strings("order_by"),
        **call.search(),
    )
    return page("experiments", exps, token)


@endpoint(write=True)
async def update_experiment(call: Call) -> dict[str, Any]:
    """Rename an experiment."""
    exp = await experiment(call, call.text("experiment_id", required=True), "member")
    new_name = call.text("new_name")
    if new_name:
        await call.store.rename_experiment(exp.experiment_id, new_name)
    return {}


@endpoint(write=True)
async def delete_experiment(call: Call) -> dict[str, Any]:
    """Delete an experiment and its runs (admins; restorable)."""
    exp = await experiment(call, call.text("experiment_id", required=True), "admin")
    await call.store.set_experiment_lifecycle(exp.experiment_id, DELETED)
    return {}


@endpoint(write=True)
async def restore_experiment(call: Call) -> dict[str, Any]:
    """Restore a deleted experiment and its runs (admins)."""
    exp = await experiment(call, call.text("experiment_id", required=True), "admin")
    await call.store.set_experiment_lifecycle(exp.experiment_id, ACTIVE)
    return {}


@endpoint(write=True)
async def set_experiment_tag(call: Call) -> dict[str, Any]:
    """Set a tag of an experiment."""
    exp = await experiment(call, call.text("experiment_id", required=True), "member")
    await call.store.set_experiment_tag(
        exp.experiment_id, call.text("key", required=True), call.text("value")
    )
    return {}


@endpoint(write=True)
async def delete_experiment_tag(call: Call) -> dict[str, Any]:
    """Delete a tag of an experiment."""
    exp = await experiment(call, call.text("experiment_id", required=True), "member")
    await call.store.delete_experiment_tag(exp.experiment_id, call.text("key", required=True))
    return {}


# --- runs -------------------------------------------------------------------------------------


@endpoint(write=True)
async def create_run(call: Call) -> dict[str, Any]:
    """Create a run in an experiment of the caller's project."""
    exp = await experiment(call, call.text("experiment_id") or "0", "member")
    run = await call.store.create_run(
        exp.experiment_id,
        call.who.user,
        run_name=call.text("run_name"),
        start_time=call.integer("start_time", lo=0),
        tags=dict(call.pairs("tags")),
    )
    call.target = f"run {run.run_id}"
    return {"run": run.to_json()}


@endpoint(write=False)
async def get_run(call: Call) -> dict[str, Any]:
    """Get a run with its data."""
    run = await run_for(call, "viewer")
    return {"run": run.to_json()}


@endpoint(write=True)
async def update_run(call: Call) -> dict[str, Any]:
    """Change a run's status, end time or name."""
    run_id = await run_id_for(call, "member")
    run = await call.store.update_run(
        run_id,
        status=call.text("status") or None,
        end_time=call.integer("end_time", lo=0),
        run_name=call.text("run_name") or None,
    )
    return {"run_info": run.info_json()}


@endpoint(write=True)
async def delete_run(call: Call) -> dict[str, Any]:
    """Delete a run (admins; restorable)."""
    await call.store.set_run_lifecycle(await run_id_for(call, "admin"), DELETED)
    return {}


@endpoint(write=True)
async def restore_run(call: Call) -> dict[str, Any]:
    """Restore a deleted run (admins)."""
    await call.store.set_run_lifecycle(await run_id_for(call, "admin"), ACTIVE)
    return {}


def _metric(item: Any, where: str) -> MetricIn:
    if not isinstance(item, dict):
        raise invalid(f"'{where}' must be an object", where)
    key = item.get("key")
    if not isinstance(key, str):
        raise invalid(f"'{where}.key' must be a string", where)
    if item.get("value") is None:
        raise invalid(f"missing value for required parameter '{where}.value'", where)
    ts = as_int(item.get("timestamp"), f"{where}.timestamp", None, 0, 2**63 - 1)
    if ts is None:
        raise invalid(f"missing value for required parameter '{where}.timestamp'", where)
    step = as_int(item.get("step"), f"{where}.step", 0, -(2**63), 2**63 - 1)
    assert step is not None
    extra = {k: item.get(k) or "" for k in ("model_id", "dataset_name", "dataset_digest")}
    if not all(isinstance(v, str) for v in extra.values()):
        raise invalid(f"'{where}' model_id and dataset fields must be strings", where)
    return MetricIn(key, as_float(item["value"], f"{where}.value"), ts, step, **extra)


@endpoint(write=True, audited=False)
async def log_metric(call: Call) -> dict[str, Any]:
    """Log one metric point."""
    run_id = await run_id_for(call, "member")
    await call.store.log_batch(run_id, [_metric(call.body, "metric")])
    return {}


@endpoint(write=True, audited=False)
async def log_param(call: Call) -> dict[str, Any]:
    """Log one param."""
    run_id = await run_id_for(call, "member")
    await call.store.log_batch(
        run_id, params=[(call.text("key", required=True), call.text("value"))]
    )
    return {}


@endpoint(write=True, audited=False)
async def set_tag(call: Call) -> dict[str, Any]:
    """Set a run tag."""
    run_id = await run_id_for(call, "member")
    await call.store.log_batch(run_id, tags=[(call.text("key", required=True), call.text("value"))])
    return {}


@endpoint(write=True)
async def delete_tag(call: Call) -> dict[str, Any]:
    """Delete a run tag."""
    run_id = await run_id_for(call, "member")
    await call.store.delete_tag(run_id, call.text("key", required=True))
    return {}


@endpoint(write=True, audited=False)
async def log_batch(call: Call) -> dict[str, Any]:
    """Log up to 1000 metric points and 100 params and tags in one transaction."""
    run_id = await run_id_for(call, "member")
    raw = call.items("metrics")
    if len(raw) > MAX_BATCH_METRICS:
        raise invalid(f"a batch holds at most {MAX_BATCH_METRICS} metrics", "metrics")
    metrics = [_metric(m, f"metrics[{i}]") for i, m in enumerate(raw)]
    params = call.pairs("params", MAX_BATCH_PARAMS_TAGS)
    tags = call.pairs("tags", MAX_BATCH_PARAMS_TAGS)
    await call.store.log_batch(run_id, metrics, params, tags)
    return {}


@endpoint(write=True, audited=False)
async def log_inputs(call: Call) -> dict[str, Any]:
    """Record datasets (and models) a run used."""
    run_id = await run_id_for(call, "member")
    datasets = []
    for i, item in enumerate(call.items("datasets")):
        where = f"datasets[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("dataset"), dict):
            raise invalid(f"'{where}.dataset' must be an object", where)
        d = item["dataset"]
        fields = {k: d.get(k) or "" for k in ("name", "digest", "source_type", "source")}
        fields |= {k: d.get(k) or "" for k in ("schema", "profile")}
        if not all(isinstance(v, str) for v in fields.values()):
            raise invalid(f"'{where}.dataset' fields must be strings", where)
        sub = Call(call.request, call.who, item, call.store)
        datasets.append(DatasetIn(**fields, tags=tuple(sub.pairs("tags"))))
    models = []
    for i, m in enumerate(call.items("models")):
        if not isinstance(m, dict) or not isinstance(m.get("model_id"), str):
            raise invalid(f"'models[{i}].model_id' must be a string", "models")
        models.append(m["model_id"])
    await call.store.log_inputs(run_id, datasets, models)
    return {}


@endpoint(write=True, audited=False)
async def log_outputs(call: Call) -> dict[str, Any]:
    """Record models a run produced."""
    run_id = await run_id_for(call, "member")
    models = []
    for i, m in enumerate(call.items("models")):
        if not isinstance(m, dict) or not isinstance(m.get("model_id"), str):
            raise invalid(f"'models[{i}].model_id' must be a string", "models")
        step = as_int(m.get("step"), f"models[{i}].step", 0, -(2**63), 2**63 - 1)
        assert step is not None
        models.append((m["model_id"], step))
    await call.store.log_outputs(run_id, models)
    return {}


@endpoint(write=True, audited=False)
async def log_model(call: Call) -> dict[str, Any]:
    """Append a model's metadata to the run's ``mlflow.log-model.history`` tag."""
    run = await run_for(call, "member")
    text = call.text("model_json", required=True)
    try:
        model = json.loads(text)
    except ValueError:
        raise invalid("model_json is not JSON", "model_json") from None
    if not isinstance(model, dict):
        raise invalid("model_json must be a JSON object", "model_json")
    try:
        history = json.loads(run.tags.get(_LOG_MODEL_TAG, "[]"))
    except ValueError:
        history = []
    history = [*history, model] if isinstance(history, list) else [model]
    value = json.dumps(history)
    # The tag's length is bounded: the oldest entries make way for new ones.
    while len(value) > MAX_TAG_VALUE and len(history) > 1:
        history = history[1:]
        value = json.dumps(history)
    if len(value) > MAX_TAG_VALUE:
        raise invalid(f"model_json is longer than {MAX_TAG_VALUE} characters", "model_json")
    await call.store.log_batch(run.run_id, tags=[(_LOG_MODEL_TAG, value)])
    return {}


def _history_json(key: str, points: list[tuple[int, int, float]], token: str | None) -> str:
    # A history can hold 100,000 points: one formatted string per point instead of a dict
    # each through json.dumps. The key is encoded once; repr() of a float is exact JSON.
    k = json.dumps(key)
    parts = [
        f'{{"key":{k},"value":{v!r},"timestamp":{ts},"step":{step}}}'
        if math.isfinite(v)
        else f'{{"key":{k},"value":"{metric_value_json(v)}","timestamp":{ts},"step":{step}}}'
        for step, ts, v in points
    ]
    tail = f',"next_page_token":{json.dumps(token)}' if token else ""
    return '{"metrics":[' + ",".join(parts) + "]" + tail + "}"


@endpoint(write=False)
async def get_metric_history(call: Call) -> web.Response:
    """Return a metric's points by step (paged with ``max_results`` and ``page_token``)."""
    run_id = await run_id_for(call, "viewer")
    key = call.text("metric_key", required=True)
    points, token = await call.store.metric_history(
        run_id, key, call.integer("max_results"), call.text("page_token") or None
    )
    return web.Response(text=_history_json(key, points, token), content_type="application/json")


@endpoint(write=False)
async def get_metric_history_bulk_interval(call: Call) -> dict[str, Any]:
    """Return points of one metric of several runs, sampled to ``max_results`` steps per run."""
    run_ids = call.strings("run_ids")
    if not run_ids:
        raise invalid("missing value for required parameter 'run_ids'", "run_ids")
    if len(run_ids) > 100:
        raise invalid("at most 100 run_ids", "run_ids")
    key = call.text("metric_key", required=True)
    start = call.integer("start_step")
    end = call.integer("end_step")
    if (start is None) != (end is None):
        raise invalid("start_step and end_step go together", "start_step")
    if start is not None and end is not None and start > end:
        raise invalid("start_step must not exceed end_step", "start_step")
    max_results = call.integer("max_results", 320, 1, 2500)
    assert max_results is not None
    for run_id in run_ids:
        owner = await call.store.run_owner(run_id)
        if owner is None:
            raise missing(f"run {run_id!r}")
        require(call, owner.project, "viewer", f"run {run_id!r}")
    rows = await call.store.metric_history_bulk_interval(run_ids, key, start, end, max_results)
    return {
        "metrics": [
            {"key": key, "value": metric_value_json(v), "timestamp": t, "step": s, "run_id": r}
            for r, s, t, v in rows
        ]
    }


@endpoint(write=False)
async def search_runs(call: Call) -> dict[str, Any]:
    """Search runs of experiments the caller can see (others' are silently left out)."""
    ids = await _experiment_ids(call, call.strings("experiment_ids"))
    runs, token = await call.store.search_runs(
        ids,
        _visible(call),
        view_type=call.text("run_view_type") or None,
        order_by=call.strings("order_by"),
        **call.search(),
    )
    return page("runs", runs, token)


# --- logged models ----------------------------------------------------------------------------


async def logged_model(call: Call, model_id: str, role: str, deleted: bool = False) -> LoggedModel:
    """Return a logged model the caller may act on with ``role``."""
    found = await call.store.get_logged_model(model_id)
    if found is None or (found.lifecycle_stage != ACTIVE and not deleted):
        raise missing(f"logged model {model_id!r}")
    require(call, found.project, role, f"logged model {model_id!r}")
    call.target, call.project = f"logged model {model_id}", found.project
    return found


@endpoint(write=True)
async def create_logged_model(call: Call) -> dict[str, Any]:
    """Create a logged model (its files then go to its artifact location)."""
    exp = await experiment(call, call.text("experiment_id", required=True), "member")
    model = await call.store.create_logged_model(
        exp.experiment_id,
        name=call.text("name"),
        model_type=call.text("model_type"),
        source_run_id=call.text("source_run_id"),
        params=dict(call.pairs("params")),
        tags=dict(call.pairs("tags")),
    )
    call.target = f"logged model {model.model_id}"
    return {"model": model.to_json()}


@endpoint(write=False)
async def get_logged_model(call: Call) -> dict[str, Any]:
    """Get a logged model."""
    model_id = call.request.match_info["model_id"]
    model = await logged_model(call, model_id, "viewer", deleted=call.flag("allow_deleted"))
    return {"model": model.to_json()}


@endpoint(write=True)
async def finalize_logged_model(call: Call) -> dict[str, Any]:
    """Mark a logged model READY (or UPLOAD_FAILED)."""
    model_id = call.request.match_info["model_id"]
    await logged_model(call, model_id, "member")
    status = call.body.get("status")
    if isinstance(status, int) and not isinstance(status, bool):
        names = ["", "LOGGED_MODEL_PENDING", "LOGGED_MODEL_READY", "LOGGED_MODEL_UPLOAD_FAILED"]
        status = names[status] if 0 < status < len(names) else ""
    if not isinstance(status, str):
        raise invalid("status must be a LoggedModelStatus name", "status")
    model = await call.store.finalize_logged_model(model_id, status)
    return {"model": model.to_json()}


@endpoint(write=True)
async def delete_logged_model(call: Call) -> dict[str, Any]:
    """Delete a logged model (admins)."""
    model_id = call.request.match_info["model_id"]
    await logged_model(call, model_id, "admin")
    await call.store.delete_logged_model(model_id)
    return {}


@endpoint(write=True, audited=False)
async def set_logged_model_tags(call: Call) -> dict[str, Any]:
    """Set tags of a logged model."""
    model_id = call.request.match_info["model_id"]
    await logged_model(call, model_id, "member")
    await call.store.set_logged_model_tags(model_id, call.pairs("tags", 1000))
    return {}


@endpoint(write=True)
async def delete_logged_model_tag(call: Call) -> dict[str, Any]:
    """Delete a tag of a logged model."""
    model_id = call.request.match_info["model_id"]
    await logged_model(call, model_id, "member")
    await call.store.delete_logged_model_tag(model_id, call.request.match_info["tag_key"])
    return {}


@endpoint(write=True, audited=False)
async def log_logged_model_params(call: Call) -> dict[str, Any]:
    """Add params to a logged model."""
    model_id = call.request.match_info["model_id"]
    await logged_model(call, model_id, "member")
    await call.store.log_logged_model_params(model_id, call.pairs("params", 1000))
    return {}


@endpoint(write=False)
async def search_logged_models(call: Call) -> dict[str, Any]:
    """Search logged models of experiments the caller can see."""
    ids = await _experiment_ids(call, call.strings("experiment_ids"))
    order: list[tuple[str, bool]] = []
    for i, o in enumerate(call.items("order_by")):
        if not isinstance(o, dict) or not isinstance(o.get("field_name"), str):
            raise invalid(f"'order_by[{i}].field_name' must be a string", "order_by")
        asc = o.get("ascending", True)
        if not isinstance(asc, bool):
            raise invalid(f"'order_by[{i}].ascending' must be true or false", "order_by")
        order.append((o["field_name"], asc))
    if call.items("datasets"):
        raise MlflowError(
            "INVALID_PARAMETER_VALUE",
            "filtering logged models by dataset is not supported by this server",
            "datasets",
        )
    models, token = await call.store.search_logged_models(
        ids,
        _visible(call),
        order_by=order,
        **call.search(),
    )
    return page("models", models, token)
