"""Experiment tracking and the model registry behind ``cplat serve``'s MLflow-compatible API.

Experiments, runs (params, metrics, tags, dataset inputs), logged models and registered
models with their versions, tags, aliases and stages, stored in SQLite (``tracking.db`` in the
service's data dir, WAL, mode 0600) or, when the service runs on PostgreSQL, in ``trk_*``
tables of the same database. Everything belongs to a cplat project. This package has no HTTP in
it: ``cplat_server.views.mlflow_compat`` serves it; jobs and the CLI may use it directly.

Open it with :func:`open_tracking_store`; the API is :class:`TrackingStore`. For access checks:

- :meth:`TrackingStore.experiment_project` -- the project of an experiment id (every artifact
  path ``<experiment_id>/...`` of the proxy starts with one);
- :meth:`TrackingStore.run_owner` -- a run's project, experiment and artifact root
  (:class:`RunOwner`);
- :meth:`TrackingStore.logged_model_owner` -- a logged model's project, experiment and
  artifact location;
- :meth:`TrackingStore.model_version_source` -- where a registered version's files are.

Artifact locations use the ``mlflow-artifacts:`` scheme, so that clients go through the
server's artifact proxy: an experiment's is ``mlflow-artifacts:/<experiment_id>``, a run's
``mlflow-artifacts:/<experiment_id>/<run_id>/artifacts``, a logged model's
``mlflow-artifacts:/<experiment_id>/models/<model_id>/artifacts``.
"""

from __future__ import annotations

from pathlib import Path

from cplat.ml.tracking.driver import Driver, PostgresDriver, SqliteDriver
from cplat.ml.tracking.errors import TrackingError
from cplat.ml.tracking.records import (
    DatasetInput,
    Experiment,
    LoggedModel,
    Metric,
    ModelVersion,
    RegisteredModel,
    Run,
    RunOwner,
)
from cplat.ml.tracking.store import DatasetIn, MetricIn, TrackingStore, artifact_root

__all__ = [
    "TRACKING_DB",
    "DatasetIn",
    "DatasetInput",
    "Driver",
    "Experiment",
    "LoggedModel",
    "Metric",
    "MetricIn",
    "ModelVersion",
    "PostgresDriver",
    "RegisteredModel",
    "Run",
    "RunOwner",
    "SqliteDriver",
    "TrackingError",
    "TrackingStore",
    "artifact_root",
    "open_tracking_store",
]

#: The SQLite file of the tracking store inside the service's data dir.
TRACKING_DB = "tracking.db"
_POSTGRES = ("postgresql://", "postgres://")


async def open_tracking_store(store_url: str, data_dir: Path) -> TrackingStore:
    """Open the tracking store that goes with the service's store.

    Parameters
    ----------
    store_url
        The service's store URL: a PostgreSQL URL puts the tracking tables in that database;
        anything else (SQLite) keeps them in their own file, ``data_dir / "tracking.db"``.
    data_dir
        The service's data dir (it must exist).

    Returns
    -------
    TrackingStore
        The open store; close it with ``await store.close()``.
    """
    if store_url.startswith(_POSTGRES):
        return await TrackingStore.open(await PostgresDriver.open(store_url))
    return await TrackingStore.open(SqliteDriver(data_dir / TRACKING_DB))
