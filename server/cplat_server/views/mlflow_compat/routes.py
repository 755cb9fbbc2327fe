"""The MLflow-compatible route table and the tracking store's place in the app's life.

Every route is served under ``/api/2.0/mlflow`` (what the client calls) and under
``/ajax-api/2.0/mlflow`` (what MLflow's web UI calls). They are outside ``/v1``: they answer in
MLflow's error shape and do their own token check (:mod:`cplat_server.views.mlflow_compat.common`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from cplat.ml.tracking import open_tracking_store
from cplat_server.keys import CONFIG
from cplat_server.views.mlflow_compat import registry as r
from cplat_server.views.mlflow_compat import tracking as t
from cplat_server.views.mlflow_compat.common import TRACKING, Handler

__all__ = ["PREFIXES", "ROUTES", "tracking_context"]

PREFIXES = ("/api/2.0/mlflow", "/ajax-api/2.0/mlflow")

_TABLE: tuple[tuple[str, str, Handler], ...] = (
    ("POST", "/experiments/create", t.create_experiment),
    ("GET", "/experiments/get", t.get_experiment),
    ("GET", "/experiments/get-by-name", t.get_experiment_by_name),
    ("POST", "/experiments/search", t.search_experiments),
    ("GET", "/experiments/search", t.search_experiments),
    ("POST", "/experiments/update", t.update_experiment),
    ("POST", "/experiments/delete", t.delete_experiment),
    ("POST", "/experiments/restore", t.restore_experiment),
    ("POST", "/experiments/set-experiment-tag", t.set_experiment_tag),
    ("POST", "/experiments/delete-experiment-tag", t.delete_experiment_tag),
    ("POST", "/runs/create", t.create_run),
    ("GET", "/runs/get", t.get_run),
    ("POST", "/runs/update", t.update_run),
    ("POST", "/runs/delete", t.delete_run),
    ("POST", "/runs/restore", t.restore_run),
    ("POST", "/runs/search", t.search_runs),
    ("POST", "/runs/log-metric", t.log_metric),
    ("POST", "/runs/log-parameter", t.log_param),
    ("POST", "/runs/set-tag", t.set_tag),
    ("POST", "/runs/delete-tag", t.delete_tag),
    ("POST", "/runs/log-batch", t.log_batch),
    ("POST", "/runs/log-inputs", t.log_inputs),
    ("POST", "/runs/outputs", t.log_outputs),
    ("POST", "/runs/log-model", t.log_model),
    ("GET", "/metrics/get-history", t.get_metric_history),
    ("GET", "/metrics/get-history-bulk-interval", t.get_metric_history_bulk_interval),
    ("POST", "/logged-models", t.create_logged_model),
    ("POST", "/logged-models/search", t.search_logged_models),
    ("GET", "/logged-models/{model_id}", t.get_logged_model),
    ("PATCH", "/logged-models/{model_id}", t.finalize_logged_model),
    ("DELETE", "/logged-models/{model_id}", t.delete_logged_model),
    ("PATCH", "/logged-models/{model_id}/tags", t.set_logged_model_tags),
    ("DELETE", "/logged-models/{model_id}/tags/{tag_key}", t.delete_logged_model_tag),
    ("POST", "/logged-models/{model_id}/params", t.log_logged_model_params),
    ("POST", "/registered-models/create", r.create_registered_model),
    ("GET", "/registered-models/get", r.get_registered_model),
    ("POST", "/registered-models/rename", r.rename_registered_model),
    ("PATCH", "/registered-models/update", r.update_registered_model),
    ("DELETE", "/registered-models/delete", r.delete_registered_model),
    ("GET", "/registered-models/search", r.search_registered_models),
    ("POST", "/registered-models/get-latest-versions", r.get_latest_versions),
    ("GET", "/registered-models/get-latest-versions", r.get_latest_versions),
    ("POST", "/registered-models/set-tag", r.set_registered_model_tag),
    ("DELETE", "/registered-models/delete-tag", r.delete_registered_model_tag),
    ("POST", "/registered-models/alias", r.set_alias),
    ("DELETE", "/registered-models/alias", r.delete_alias),
    ("GET", "/registered-models/alias", r.get_by_alias),
    ("POST", "/model-versions/create", r.create_model_version),
    ("GET", "/model-versions/get", r.get_model_version),
    ("PATCH", "/model-versions/update", r.update_model_version),
    ("DELETE", "/model-versions/delete", r.delete_model_version),
    ("POST", "/model-versions/transition-stage", r.transition_stage),
    ("GET", "/model-versions/search", r.search_model_versions),
    ("GET", "/model-versions/get-download-uri", r.get_download_uri),
    ("POST", "/model-versions/set-tag", r.set_model_version_tag),
    ("DELETE", "/model-versions/delete-tag", r.delete_model_version_tag),
)

#: ``(method, path, handler)`` of every MLflow-compatible endpoint, under both prefixes.
ROUTES: tuple[tuple[str, str, Handler], ...] = tuple(
    (method, prefix + path, handler) for prefix in PREFIXES for method, path, handler in _TABLE
)


async def tracking_context(app: web.Application) -> AsyncIterator[None]:
    """Open the tracking store for the app's life (an aiohttp cleanup context).

    It lives next to the service's store: in ``tracking.db`` of the data dir with SQLite, in
    the same database with PostgreSQL.
    """
    cfg = app[CONFIG]
    cfg.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = await open_tracking_store(cfg.store_url, cfg.data_dir)
    app[TRACKING] = store
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            await store.close()
