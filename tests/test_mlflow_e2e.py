"""The issue's end-to-end story with the unmodified ``mlflow`` client and a real ``cplat serve``.

An experiment, a run with params, metrics over steps, tags and an artifact folder; a
scikit-learn model logged with ``mlflow.sklearn.log_model``, registered, given the alias
``champion`` and loaded back through ``models:/<name>@champion`` (and ``models:/<name>/1``)
with the original's predictions; another project's token sees none of it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("aiohttp")
mlflow = pytest.importorskip("mlflow")
sklearn_linear = pytest.importorskip("sklearn.linear_model")
np = pytest.importorskip("numpy")

from mlflow import MlflowClient  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

from cplat.testing.served import CLIENT_ENV, Served, serve  # noqa: E402
from cplat.testing.service import token  # noqa: E402

ANA = token("ana", "vision", "member")
EVE = token("eve", "other", "member")


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[Served]:
    saved = {k: os.environ.get(k) for k in [*CLIENT_ENV, "MLFLOW_TRACKING_URI"]}
    saved["MLFLOW_TRACKING_TOKEN"] = os.environ.get("MLFLOW_TRACKING_TOKEN")
    os.environ.update(CLIENT_ENV)
    with serve(tmp_path) as s:
        yield s
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_sklearn_model_logged_registered_and_loaded_by_alias(
    served: Served, tmp_path: Path
) -> None:
    served.use(ANA)
    client = MlflowClient(served.url)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0]) > 0).astype(int)
    model = sklearn_linear.LogisticRegression(C=0.5).fit(x, y)

    folder = tmp_path / "report"
    (folder / "plots").mkdir(parents=True)
    (folder / "summary.txt").write_text("accuracy looks fine\n")
    (folder / "plots" / "curve.csv").write_text("step,loss\n0,1.0\n1,0.5\n")

    mlflow.set_experiment("churn")
    with mlflow.start_run(run_name="logreg") as run:
        mlflow.log_params({"C": 0.5, "solver": "lbfgs"})
        for step in range(10):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        mlflow.set_tag("team", "vision")
        mlflow.log_artifacts(str(folder), artifact_path="report")
        info = mlflow.sklearn.log_model(model, name="model", registered_model_name="churn-clf")
    run_id = run.info.run_id

    listed = {a.path for a in client.list_artifacts(run_id, "report")}
    assert listed == {"report/summary.txt", "report/plots"}
    got = client.get_run(run_id)
    assert got.data.params["C"] == "0.5" and got.data.tags["team"] == "vision"
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == list(range(10))
    assert [o.model_id for o in got.outputs.model_outputs] == [info.model_id]

    version = client.get_latest_versions("churn-clf")[0]
    # (The client's ModelVersion does not read model_id back; the source names the model.)
    assert version.version == "1" and version.source == f"models:/{info.model_id}"
    client.set_registered_model_alias("churn-clf", "champion", version.version)

    expected = model.predict(x)
    for uri in ("models:/churn-clf@champion", "models:/churn-clf/1", info.model_uri):
        loaded = mlflow.pyfunc.load_model(uri)
        assert (np.asarray(loaded.predict(x)) == expected).all(), uri

    # Search finds exactly this run; another project finds nothing and reads nothing.
    found = client.search_runs([got.info.experiment_id], "metrics.loss < 0.2 and params.C = '0.5'")
    assert [r.info.run_id for r in found] == [run_id]
    served.use(EVE)
    for fn, args in [
        (client.get_run, (run_id,)),
        (client.get_registered_model, ("churn-clf",)),
        (client.list_artifacts, (run_id,)),
    ]:
        with pytest.raises(MlflowException) as err:
            fn(*args)
        assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST", fn
    with pytest.raises(MlflowException):
        mlflow.pyfunc.load_model("models:/churn-clf@champion")
    assert client.search_runs([got.info.experiment_id]) == []
