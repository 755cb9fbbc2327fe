"""The unmodified ``mlflow`` client against a real ``cplat serve``: tracking and the registry.

One server for the module (starting one costs seconds); every test works in experiments and
models of its own names. Tokens: ``ana`` (member of vision), ``vic`` (viewer of vision),
``ada`` (admin of vision), ``bob`` (another member of vision) and ``eve`` (member of another
project).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

pytest.importorskip("aiohttp")
mlflow = pytest.importorskip("mlflow")

from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag, ViewType  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

from cplat.testing.served import CLIENT_ENV, Served, serve  # noqa: E402
from cplat.testing.service import PG_DSN, SECRET, token  # noqa: E402

ANA = token("ana", "vision", "member")
VIC = token("vic", "vision", "viewer")
ADA = token("ada", "vision", "admin")
BOB = token("bob", "vision", "member")
EVE = token("eve", "other", "member")
ROOT = token("root", "system", "admin", cluster_admin=True)
EXPIRED = jwt.encode(
    {"sub": "ana", "project": "vision", "role": "member", "exp": int(time.time()) - 60},
    SECRET,
    algorithm="HS256",
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    saved = {k: os.environ.get(k) for k in [*CLIENT_ENV, "MLFLOW_TRACKING_URI"]}
    saved["MLFLOW_TRACKING_TOKEN"] = os.environ.get("MLFLOW_TRACKING_TOKEN")
    os.environ.update(CLIENT_ENV)
    with serve(tmp_path_factory.mktemp("mlflow")) as s:
        yield s
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture()
def client(served: Served) -> MlflowClient:
    served.use(ANA)
    return MlflowClient(served.url)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def refused(code: str, fn: Any, *args: Any, **kwargs: Any) -> MlflowException:
    with pytest.raises(MlflowException) as err:
        fn(*args, **kwargs)
    assert err.value.error_code == code, err.value
    return err.value


def test_experiments_create_get_search_tags_delete_restore(
    served: Served, client: MlflowClient
) -> None:
    name = unique("exp")
    eid = client.create_experiment(name, tags={"team": "cv", "stage": "dev"})
    exp = client.get_experiment(eid)
    assert exp.name == name and exp.tags == {"team": "cv", "stage": "dev"}
    assert exp.artifact_location == f"mlflow-artifacts:/{eid}"
    assert client.get_experiment_by_name(name).experiment_id == eid
    assert client.get_experiment_by_name(unique("missing")) is None
    refused("RESOURCE_ALREADY_EXISTS", client.create_experiment, name)

    client.set_experiment_tag(eid, "stage", "prod")
    client.delete_experiment_tag(eid, "team")
    assert client.get_experiment(eid).tags == {"stage": "prod"}
    found = client.search_experiments(filter_string=f"name = '{name}' and tags.stage = 'prod'")
    assert [e.experiment_id for e in found] == [eid]
    assert (
        client.search_experiments(filter_string=f"name LIKE '{name[:6]}%' and tags.stage = 'x'")
        == []
    )

    client.rename_experiment(eid, name + "-renamed")
    assert client.get_experiment(eid).name == name + "-renamed"

    # A member may not delete; an admin may, and restore.
    refused("PERMISSION_DENIED", client.delete_experiment, eid)
    served.use(ADA)
    client.delete_experiment(eid)
    assert client.get_experiment(eid).lifecycle_stage == "deleted"
    active = {e.experiment_id for e in client.search_experiments(ViewType.ACTIVE_ONLY)}
    deleted = {e.experiment_id for e in client.search_experiments(ViewType.DELETED_ONLY)}
    assert eid not in active and eid in deleted
    client.restore_experiment(eid)
    assert client.get_experiment(eid).lifecycle_stage == "active"


def test_run_lifecycle_params_metrics_tags_batch_history(
    served: Served, client: MlflowClient
) -> None:
    mlflow.set_experiment(unique("runs"))
    with mlflow.start_run(run_name="first") as run:
        mlflow.log_params({"lr": "0.01", "layers": 3})
        for step in range(20):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        mlflow.set_tags({"team": "cv", "note": "hello"})
        mlflow.log_metric("nan_metric", float("nan"))
    run_id = run.info.run_id
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED" and got.info.end_time is not None
    assert got.info.run_name == "first" and got.info.user_id == "ana"
    assert got.info.artifact_uri == f"mlflow-artifacts:/{got.info.experiment_id}/{run_id}/artifacts"
    assert got.data.params == {"lr": "0.01", "layers": "3"}
    assert got.data.metrics["loss"] == pytest.approx(1.0 / 20)
    assert got.data.metrics["nan_metric"] != got.data.metrics["nan_metric"]  # NaN survives
    assert got.data.tags["team"] == "cv" and got.data.tags["mlflow.runName"] == "first"

    history = client.get_metric_history(run_id, "loss")
    assert [m.step for m in history] == list(range(20))
    assert [m.value for m in history] == pytest.approx([1.0 / (s + 1) for s in range(20)])

    # Batches, and the rules of params: a value once logged cannot change.
    ts = 1_700_000_000_000
    client.log_batch(
        run_id,
        metrics=[Metric("acc", 0.5 + i / 100, ts + i, i) for i in range(1000)],
        params=[Param("batch", "64")],
        tags=[RunTag("phase", "batch")],
    )
    assert len(client.get_metric_history(run_id, "acc")) == 1000
    assert client.get_run(run_id).data.metrics["acc"] == pytest.approx(0.5 + 999 / 100)
    refused("INVALID_PARAMETER_VALUE", client.log_param, run_id, "lr", "0.1")
    client.log_param(run_id, "lr", "0.01")  # the same value again is fine

    client.delete_tag(run_id, "note")
    assert "note" not in client.get_run(run_id).data.tags
    refused("RESOURCE_DOES_NOT_EXIST", client.delete_tag, run_id, "note")

    # Bulk interval (the UI's charts): sampled steps, first and last kept.
    from mlflow.store.tracking.rest_store import RestStore  # noqa: F401 - the client's store

    status, body = served.call(
        "GET",
        f"/api/2.0/mlflow/metrics/get-history-bulk-interval?run_ids={run_id}"
        "&metric_key=acc&max_results=10",
        ANA,
    )
    assert status == 200
    steps = [m["step"] for m in body["metrics"]]
    assert len(steps) == 10 and steps[0] == 0 and steps[-1] == 999

    # Datasets.
    pd = pytest.importorskip("pandas")
    ds = mlflow.data.from_pandas(pd.DataFrame({"x": [1, 2]}), name="train-set")
    with mlflow.start_run(run_id=run_id):
        mlflow.log_input(ds, context="training")
    inputs = client.get_run(run_id).inputs.dataset_inputs
    assert [i.dataset.name for i in inputs] == ["train-set"]
    assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "training"
    exp_id = got.info.experiment_id
    found = client.search_runs([exp_id], "datasets.name = 'train-set'")
    assert [r.info.run_id for r in found] == [run_id]

    # Status, deletion (admins), restoration.
    client.set_terminated(run_id, "FAILED")
    assert client.get_run(run_id).info.status == "FAILED"
    refused("PERMISSION_DENIED", client.delete_run, run_id)
    served.use(ADA)
    client.delete_run(run_id)
    assert client.get_run(run_id).info.lifecycle_stage == "deleted"
    served.use(ANA)
    refused("INVALID_PARAMETER_VALUE", client.log_metric, run_id, "x", 1.0)
    assert client.search_runs([exp_id]) == []
    assert len(client.search_runs([exp_id], run_view_type=ViewType.DELETED_ONLY)) == 1
    served.use(ADA)
    client.restore_run(run_id)
    assert client.get_run(run_id).info.lifecycle_stage == "active"


def test_default_experiment_is_per_project(served: Served, client: MlflowClient) -> None:
    run = client.create_run("0")
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == "Default" and exp.experiment_id != "0"
    assert client.get_experiment("0").experiment_id == exp.experiment_id
    served.use(EVE)
    other = client.create_run("0")
    assert other.info.experiment_id != exp.experiment_id


@pytest.fixture(scope="module")
def search_runs(served: Served) -> tuple[str, dict[str, str]]:
    """Six runs with known metrics, params and tags: name -> run id."""
    served.use(ANA)
    c = MlflowClient(served.url)
    eid = c.create_experiment(unique("search"))
    spec = {
        "a": (0.95, "0.01", "alpha", "FINISHED"),
        "b": (0.91, "0.01", "beta", "FINISHED"),
        "c": (0.85, "0.01", "alpha", "FAILED"),
        "d": (0.97, "0.1", "alpha", "FINISHED"),
        "e": (0.50, "0.01", "Alpha", "RUNNING"),
        "f": (None, "0.01", "alpha", "FINISHED"),
    }
    ids = {}
    for i, (name, (acc, lr, tag, status)) in enumerate(spec.items()):
        run = c.create_run(eid, run_name=f"run-{name}", start_time=1_000 + i)
        metrics = [Metric("acc", acc, 1, 0)] if acc is not None else []
        c.log_batch(run.info.run_id, metrics, [Param("lr", lr)], [RunTag("x", tag)])
        if status != "RUNNING":
            c.set_terminated(run.info.run_id, status)
        ids[name] = run.info.run_id
    return eid, ids


@pytest.mark.parametrize(
    ("filter_string", "expected"),
    [
        ("metrics.acc > 0.9 and params.lr = '0.01' and tags.x LIKE 'a%'", {"a"}),
        ("metrics.acc > 0.9", {"a", "b", "d"}),
        ("metrics.acc >= 0.91 and metrics.acc <= 0.95", {"a", "b"}),
        ("params.lr != '0.01'", {"d"}),
        ("tags.x ILIKE 'alpha'", {"a", "c", "d", "e", "f"}),
        ("tags.x = 'alpha'", {"a", "c", "d", "f"}),
        ("attributes.status = 'FAILED'", {"c"}),
        ("status != 'FINISHED'", {"c", "e"}),
        ("attributes.run_name IN ('run-a', 'run-f')", {"a", "f"}),
        ("run_name LIKE 'run-%' and metrics.acc < 0.6", {"e"}),
        ("metrics.`acc` IS NULL", {"f"}),
        ('params."lr" = "0.1"', {"d"}),
        ("", {"a", "b", "c", "d", "e", "f"}),
    ],
)
def test_search_runs_filters_return_exactly_the_expected_runs(
    client: MlflowClient,
    search_runs: tuple[str, dict[str, str]],
    filter_string: str,
    expected: set[str],
) -> None:
    eid, ids = search_runs
    found = client.search_runs([eid], filter_string)
    assert {r.info.run_id for r in found} == {ids[n] for n in expected}


def test_search_runs_order_and_pages(
    client: MlflowClient, search_runs: tuple[str, dict[str, str]]
) -> None:
    eid, ids = search_runs
    names = {v: k for k, v in ids.items()}
    ordered = client.search_runs([eid], order_by=["metrics.acc DESC"])
    # Runs without the metric come last, whatever the direction.
    assert [names[r.info.run_id] for r in ordered] == ["d", "a", "b", "c", "e", "f"]
    ordered = client.search_runs([eid], order_by=["metrics.acc ASC"])
    assert [names[r.info.run_id] for r in ordered] == ["e", "c", "b", "a", "d", "f"]
    by_start = client.search_runs([eid])  # default: newest first
    assert [names[r.info.run_id] for r in by_start] == ["f", "e", "d", "c", "b", "a"]
    seen: list[str] = []
    token = None
    while True:
        page = client.search_runs([eid], max_results=4, page_token=token, order_by=["tags.x"])
        seen += [names[r.info.run_id] for r in page]
        token = page.token
        if not token:
            break
    assert sorted(seen) == ["a", "b", "c", "d", "e", "f"] and len(seen) == 6
    assert seen[0] == "e"  # "Alpha" sorts before "alpha"
    frame = mlflow.search_runs([eid], "metrics.acc > 0.9", order_by=["metrics.acc DESC"])
    assert list(frame["run_id"]) == [ids["d"], ids["a"], ids["b"]]


@pytest.mark.parametrize(
    "bad",
    [
        "metrics.acc > 'high'",
        "params.lr > 0.1",
        "metrics.acc = 0.9 OR metrics.acc = 0.8",
        "nonsense.x = 'a'",
        "unknown_attribute = 'a'",
        "metrics.acc >",
        "params.lr = '0.01' and",
        "tags.x = 'unterminated",
        "params.lr = '1' OR 1=1",
    ],
)
def test_invalid_filters_are_invalid_parameter_value(
    client: MlflowClient, search_runs: tuple[str, dict[str, str]], bad: str
) -> None:
    eid, _ = search_runs
    err = refused("INVALID_PARAMETER_VALUE", client.search_runs, [eid], bad)
    assert err.get_http_status_code() == 400


def test_filter_text_is_never_sql(
    served: Served, client: MlflowClient, search_runs: tuple[str, dict[str, str]]
) -> None:
    eid, ids = search_runs
    sneaky = "params.`lr' OR '1'='1` = 'x' and tags.x = 'a'' OR ''1''=''1'"
    assert client.search_runs([eid], sneaky) == []
    assert len(client.search_runs([eid])) == len(ids)  # nothing was dropped or changed


def test_registry_models_versions_aliases_stages(served: Served, client: MlflowClient) -> None:
    name = unique("model")
    eid = client.create_experiment(unique("reg"))
    run = client.create_run(eid)
    run_id = run.info.run_id
    client.create_registered_model(name, tags={"owner": "cv"}, description="churn")
    refused("RESOURCE_ALREADY_EXISTS", client.create_registered_model, name)
    v1 = client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id)
    v2 = client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id, tags={"k": "v"})
    assert (v1.version, v2.version) == ("1", "2")
    assert v2.tags == {"k": "v"} and v2.user_id == "ana"

    client.set_registered_model_alias(name, "champion", "1")
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    client.set_registered_model_alias(name, "champion", "2")  # moves
    assert client.get_registered_model(name).aliases == {"champion": "2"}
    refused("INVALID_PARAMETER_VALUE", client.set_registered_model_alias, name, "v3", "1")

    # models:/ URIs resolve through the client to the run's artifact folder.
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

    root = f"mlflow-artifacts:/{eid}/{run_id}/artifacts/model"
    assert ModelsArtifactRepository.get_underlying_uri(f"models:/{name}/1") == root
    assert ModelsArtifactRepository.get_underlying_uri(f"models:/{name}@champion") == root
    assert client.get_model_version_download_uri(name, "2") == root

    # Stages (for older clients).
    client.transition_model_version_stage(name, "1", "Production")
    client.transition_model_version_stage(name, "2", "Production", archive_existing_versions=True)
    stages = {v.version: v.current_stage for v in client.search_model_versions(f"name = '{name}'")}
    assert stages == {"1": "Archived", "2": "Production"}
    latest = client.get_latest_versions(name, stages=["Production"])
    assert [v.version for v in latest] == ["2"]
    refused("INVALID_PARAMETER_VALUE", client.transition_model_version_stage, name, "1", "Prod")

    client.update_registered_model(name, description="churn v2")
    client.set_registered_model_tag(name, "tier", "gold")
    client.delete_registered_model_tag(name, "owner")
    client.set_model_version_tag(name, "1", "checked", "yes")
    client.delete_model_version_tag(name, "2", "k")
    rm = client.get_registered_model(name)
    assert rm.description == "churn v2" and rm.tags == {"tier": "gold"}
    assert client.get_model_version(name, "1").tags == {"checked": "yes"}
    found = client.search_registered_models(f"name LIKE '{name[:10]}%' and tags.tier = 'gold'")
    assert [m.name for m in found] == [name]
    assert [v.version for v in client.search_model_versions(f"run_id = '{run_id}'")] == ["2", "1"]

    client.rename_registered_model(name, name + "-r")
    assert client.get_model_version(name + "-r", "1").version == "1"
    refused("RESOURCE_DOES_NOT_EXIST", client.get_registered_model, name)
    client.delete_registered_model_alias(name + "-r", "champion")
    refused("RESOURCE_DOES_NOT_EXIST", client.get_model_version_by_alias, name + "-r", "champion")
    refused("PERMISSION_DENIED", client.delete_model_version, name + "-r", "1")
    served.use(ADA)
    client.delete_model_version(name + "-r", "1")
    refused("RESOURCE_DOES_NOT_EXIST", client.get_model_version, name + "-r", "1")
    client.delete_registered_model(name + "-r")
    refused("RESOURCE_DOES_NOT_EXIST", client.get_registered_model, name + "-r")


def test_logged_models_and_registration_from_them(served: Served, client: MlflowClient) -> None:
    eid = client.create_experiment(unique("lm"))
    run = client.create_run(eid)
    lm = client.create_logged_model(
        eid, name="clf", source_run_id=run.info.run_id, params={"C": "1.0"}, tags={"t": "1"}
    )
    assert lm.model_id.startswith("m-") and lm.status.to_int() == 1  # PENDING
    assert lm.artifact_location == f"mlflow-artifacts:/{eid}/models/{lm.model_id}/artifacts"
    client.set_logged_model_tags(lm.model_id, {"u": "2"})
    client.delete_logged_model_tag(lm.model_id, "t")
    client.log_model_params(lm.model_id, {"depth": "3"})
    from mlflow.entities import LoggedModelStatus

    done = client.finalize_logged_model(lm.model_id, LoggedModelStatus.READY)
    assert done.status == LoggedModelStatus.READY
    got = client.get_logged_model(lm.model_id)
    assert got.tags == {"u": "2"} and got.params == {"C": "1.0", "depth": "3"}
    found = client.search_logged_models([eid], filter_string="name = 'clf'")
    assert [m.model_id for m in found] == [lm.model_id]
    name = unique("from-lm")
    client.create_registered_model(name)
    mv = client.create_model_version(name, f"models:/{lm.model_id}", model_id=lm.model_id)
    assert client.get_model_version_download_uri(name, mv.version) == lm.artifact_location
    served.use(EVE)
    refused("RESOURCE_DOES_NOT_EXIST", client.get_logged_model, lm.model_id)
    assert list(client.search_logged_models([eid])) == []


def test_another_project_sees_nothing(served: Served, client: MlflowClient) -> None:
    exp_name, model_name = unique("secret"), unique("secret-model")
    eid = client.create_experiment(exp_name)
    run = client.create_run(eid)
    client.log_metric(run.info.run_id, "acc", 0.9)
    client.create_registered_model(model_name)
    client.create_model_version(model_name, f"runs:/{run.info.run_id}/m")

    served.use(EVE)
    for fn, args in [
        (client.get_experiment, (eid,)),
        (client.get_run, (run.info.run_id,)),
        (client.get_metric_history, (run.info.run_id, "acc")),
        (client.log_metric, (run.info.run_id, "acc", 0.1)),
        (client.set_tag, (run.info.run_id, "x", "y")),
        (client.set_experiment_tag, (eid, "x", "y")),
        (client.delete_experiment, (eid,)),
        (client.get_registered_model, (model_name,)),
        (client.get_model_version, (model_name, "1")),
        (client.create_model_version, (model_name, "runs:/x/m")),
        (client.create_run, (eid,)),
    ]:
        err = refused("RESOURCE_DOES_NOT_EXIST", fn, *args)
        assert err.get_http_status_code() == 404
    assert client.get_experiment_by_name(exp_name) is None
    assert all(e.experiment_id != eid for e in client.search_experiments(ViewType.ALL))
    assert client.search_runs([eid], run_view_type=ViewType.ALL) == []
    assert all(m.name != model_name for m in client.search_registered_models())
    assert client.search_model_versions(f"name = '{model_name}'") == []
    # Eve's own model of the same name is hers alone.
    client.create_registered_model(model_name)
    assert client.get_registered_model(model_name).latest_versions == []
    # A version of Eve's model cannot point at Vision's run either.
    refused(
        "RESOURCE_DOES_NOT_EXIST",
        client.create_model_version,
        model_name,
        f"runs:/{run.info.run_id}/m",
    )
    refused(
        "RESOURCE_DOES_NOT_EXIST",
        client.create_model_version,
        model_name,
        f"mlflow-artifacts:/{eid}/{run.info.run_id}/artifacts/m",
    )


def test_viewer_reads_but_cannot_write(served: Served, client: MlflowClient) -> None:
    eid = client.create_experiment(unique("viewed"))
    run = client.create_run(eid)
    name = unique("viewed-model")
    client.create_registered_model(name)
    served.use(VIC)
    assert client.get_experiment(eid).experiment_id == eid
    assert client.get_run(run.info.run_id).info.run_id == run.info.run_id
    assert client.get_registered_model(name).name == name
    for fn, args in [
        (client.create_experiment, (unique("nope"),)),
        (client.create_run, (eid,)),
        (client.log_metric, (run.info.run_id, "acc", 0.5)),
        (client.log_param, (run.info.run_id, "lr", "1")),
        (client.set_tag, (run.info.run_id, "a", "b")),
        (client.set_terminated, (run.info.run_id,)),
        (client.create_registered_model, (unique("nope"),)),
        (client.create_model_version, (name, f"runs:/{run.info.run_id}/m")),
    ]:
        err = refused("PERMISSION_DENIED", fn, *args)
        assert err.get_http_status_code() == 403


def test_maintainers_guard_versions_and_aliases(served: Served, client: MlflowClient) -> None:
    eid = client.create_experiment(unique("guarded"))
    run = client.create_run(eid)
    name = unique("guarded-model")
    client.create_registered_model(name, tags={"cplat.maintainers": "ana, carl"})
    v1 = client.create_model_version(name, f"runs:/{run.info.run_id}/m")
    client.set_registered_model_alias(name, "champion", v1.version)

    served.use(BOB)  # a member, but not a maintainer
    assert client.get_registered_model(name).aliases == {"champion": "1"}
    for fn, args in [
        (client.create_model_version, (name, f"runs:/{run.info.run_id}/m")),
        (client.set_registered_model_alias, (name, "champion", "1")),
        (client.delete_registered_model_alias, (name, "champion")),
        (client.transition_model_version_stage, (name, "1", "Production")),
        (client.set_registered_model_tag, (name, "cplat.maintainers", "bob")),
        (client.delete_registered_model_tag, (name, "cplat.maintainers")),
    ]:
        refused("PERMISSION_DENIED", fn, *args)
    client.set_registered_model_tag(name, "note", "bob may tag")  # unguarded changes stay open

    served.use(ADA)  # project admins may always
    client.set_registered_model_alias(name, "challenger", "1")
    # Naming maintainers on an unguarded model: its creator or an admin.
    other = unique("open-model")
    served.use(ANA)
    client.create_registered_model(other)
    served.use(BOB)
    refused("PERMISSION_DENIED", client.set_registered_model_tag, other, "cplat.maintainers", "bob")
    served.use(ANA)
    client.set_registered_model_tag(other, "cplat.maintainers", "ana")


def test_bad_bodies_and_tokens_get_mlflow_errors(served: Served, client: MlflowClient) -> None:
    eid = client.create_experiment(unique("bad"))
    run_id = client.create_run(eid).info.run_id
    base = "/api/2.0/mlflow"
    ipv, dne, bad_json, unauth = (
        "INVALID_PARAMETER_VALUE",
        "RESOURCE_DOES_NOT_EXIST",
        "MALFORMED_REQUEST",
        "UNAUTHENTICATED",
    )
    batch, search, create = "/runs/log-batch", "/runs/search", "/experiments/create"

    def metric(**kw: Any) -> dict[str, Any]:
        return {"run_id": run_id, "metrics": [{"key": "a", "value": 1, "timestamp": 1} | kw]}

    history = f"/metrics/get-history?run_id={run_id}&metric_key=a&max_results=-1"
    cases: list[tuple[str, str, str | None, Any, bytes | None, int, str]] = [
        ("POST", batch, ANA, None, b"{not json", 400, bad_json),
        ("POST", batch, ANA, None, b"[1, 2]", 400, bad_json),
        ("POST", batch, ANA, None, b"\xff\xfe", 400, bad_json),
        ("POST", batch, ANA, {"run_id": run_id, "metrics": "x"}, None, 400, ipv),
        ("POST", batch, ANA, metric(value="high"), None, 400, ipv),
        ("POST", batch, ANA, metric(timestamp=None), None, 400, ipv),
        ("POST", batch, ANA, metric(key="../x"), None, 400, ipv),
        ("POST", batch, ANA, metric(step="1.5"), None, 400, ipv),
        ("POST", batch, ANA, {"run_id": run_id, "params": [{"key": "k" * 300}]}, None, 400, ipv),
        ("POST", batch, ANA, metric() | {"metrics": metric()["metrics"] * 1001}, None, 400, ipv),
        ("POST", "/runs/log-parameter", ANA, {"run_id": run_id, "key": "a", "value": 5}, None,
         400, ipv),
        ("POST", "/runs/log-metric", ANA, metric()["metrics"][0] | {"run_id": "nope"}, None,
         404, dne),
        ("POST", "/runs/update", ANA, {"run_id": run_id, "status": "EXPLODED"}, None, 400, ipv),
        ("POST", search, ANA, {"experiment_ids": [eid], "max_results": 0}, None, 400, ipv),
        ("POST", search, ANA, {"experiment_ids": [eid], "page_token": "garbage!"}, None, 400,
         ipv),
        ("POST", search, ANA, {"experiment_ids": [eid], "order_by": ["metrics.a UP"]}, None,
         400, ipv),
        ("POST", create, ANA, {"name": ""}, None, 400, ipv),
        ("POST", create, ANA, {"name": "x", "artifact_location": "file:///etc"}, None, 400, ipv),
        ("POST", create, ANA, {"name": 5}, None, 400, ipv),
        ("GET", "/experiments/get?experiment_id=../../etc", ANA, None, None, 404, dne),
        ("GET", "/experiments/get", ANA, None, None, 400, ipv),
        ("GET", "/model-versions/get?name=x&version=abc", ANA, None, None, 400, ipv),
        ("GET", history, ANA, None, None, 400, ipv),
        ("GET", "/experiments/get?experiment_id=1", None, None, None, 401, unauth),
        ("GET", "/experiments/get?experiment_id=1", "forged.token.x", None, None, 401, unauth),
        ("POST", create, EXPIRED, {"name": "late"}, None, 401, unauth),
    ]  # fmt: skip
    for method, path, tok, body, raw, status, code in cases:
        got_status, answer = served.call(method, base + path, tok, body, raw)
        assert (got_status, answer.get("error_code") if isinstance(answer, dict) else answer) == (
            status,
            code,
        ), (method, path, answer)
    # The alias prefix the web UI uses answers the same.
    status, answer = served.call(
        "GET", f"/ajax-api/2.0/mlflow/experiments/get?experiment_id={eid}", ANA
    )
    assert status == 200 and answer["experiment"]["experiment_id"] == eid


def test_writes_are_audited_with_their_project(served: Served, client: MlflowClient) -> None:
    name = unique("audited")
    eid = client.create_experiment(name)
    before = len(served.call("GET", "/v1/audit?limit=1000", ROOT)[1]["entries"])
    served.use(EVE)
    refused("RESOURCE_DOES_NOT_EXIST", client.delete_experiment, eid)
    status, body = served.call("GET", "/v1/audit?limit=1000", ROOT)
    assert status == 200
    entries = [e for e in body["entries"] if e["target"] == f"experiment {eid}"]
    assert [(e["user"], e["project"], e["status"]) for e in entries] == [("ana", "vision", 200)]
    assert entries[0]["action"] == "POST /api/2.0/mlflow/experiments/create"
    # A refused attempt on another project's experiment is recorded as the caller's (as on
    # /v1): the target's project is not disclosed by the log either.
    tried = [
        e
        for e in body["entries"][before:]
        if e["user"] == "eve" and e["action"] == "POST /api/2.0/mlflow/experiments/delete"
    ]
    assert [(e["project"], e["status"]) for e in tried] == [("other", 404)]


@pytest.mark.skipif(not PG_DSN, reason="CPLAT_TEST_PG_DSN is not set")
def test_client_on_postgres(tmp_path: Path) -> None:
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN")}
    try:
        with serve(tmp_path, db=PG_DSN) as s:
            s.use(ANA)
            c = MlflowClient(s.url)
            eid = c.create_experiment(unique("pg"))
            run = c.create_run(eid)
            c.log_batch(run.info.run_id, [Metric("m", float(i), i, i) for i in range(100)])
            assert len(c.get_metric_history(run.info.run_id, "m")) == 100
            assert len(c.search_runs([eid], "metrics.m > 50")) == 1
            assert not (s.data_dir / "tracking.db").exists()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
