"""Tables of the tracking store.

They are prefixed ``trk_``: on PostgreSQL they share the service's database with the
scheduler's tables.

Metrics are two tables. ``trk_metric_series`` has one row per (run, key) holding the latest
point, which is what run listings and ``metrics.x > v`` filters read; ``trk_metric_points`` is
the narrow history, clustered by (series, step, timestamp) so that a metric's history is one
range scan. A point repeated exactly (same step, timestamp and value) is stored once, as MLflow
does. NaN is stored as value 0 with ``is_nan`` 1: SQLite turns a NaN REAL into NULL.
"""

from __future__ import annotations

__all__ = ["SCHEMA_VERSION", "statements"]

SCHEMA_VERSION = 1

_TABLES = """
CREATE TABLE IF NOT EXISTS trk_meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS trk_experiments (
    experiment_id {id},
    project TEXT NOT NULL,
    name TEXT NOT NULL,
    artifact_location TEXT NOT NULL,
    lifecycle_stage TEXT NOT NULL,
    creation_time BIGINT NOT NULL,
    last_update_time BIGINT NOT NULL,
    UNIQUE (project, name)
);
CREATE TABLE IF NOT EXISTS trk_experiment_tags (
    experiment_id BIGINT NOT NULL REFERENCES trk_experiments (experiment_id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (experiment_id, key)
);
CREATE TABLE IF NOT EXISTS trk_runs (
    run_id TEXT PRIMARY KEY,
    experiment_id BIGINT NOT NULL REFERENCES trk_experiments (experiment_id),
    project TEXT NOT NULL,
    run_name TEXT NOT NULL,
    user_id TEXT NOT NULL,
    status TEXT NOT NULL,
    start_time BIGINT NOT NULL,
    end_time BIGINT,
    artifact_uri TEXT NOT NULL,
    lifecycle_stage TEXT NOT NULL,
    deleted_time BIGINT
);
CREATE INDEX IF NOT EXISTS trk_runs_by_experiment
    ON trk_runs (experiment_id, start_time DESC, run_id);
CREATE TABLE IF NOT EXISTS trk_params (
    run_id TEXT NOT NULL REFERENCES trk_runs (run_id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE INDEX IF NOT EXISTS trk_params_by_key ON trk_params (key, value);
CREATE TABLE IF NOT EXISTS trk_tags (
    run_id TEXT NOT NULL REFERENCES trk_runs (run_id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE INDEX IF NOT EXISTS trk_tags_by_key ON trk_tags (key, value);
CREATE TABLE IF NOT EXISTS trk_metric_series (
    series_id {id},
    run_id TEXT NOT NULL REFERENCES trk_runs (run_id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    last_step BIGINT NOT NULL,
    last_timestamp BIGINT NOT NULL,
    last_value {float} NOT NULL,
    last_is_nan INTEGER NOT NULL,
    UNIQUE (run_id, key)
);
CREATE INDEX IF NOT EXISTS trk_metric_series_by_key ON trk_metric_series (key, last_value);
CREATE TABLE IF NOT EXISTS trk_metric_points (
    series_id BIGINT NOT NULL,
    step BIGINT NOT NULL,
    timestamp BIGINT NOT NULL,
    value {float} NOT NULL,
    is_nan INTEGER NOT NULL,
    PRIMARY KEY (series_id, step, timestamp, value, is_nan)
) {without_rowid};
CREATE TABLE IF NOT EXISTS trk_datasets (
    dataset_id {id},
    experiment_id BIGINT NOT NULL REFERENCES trk_experiments (experiment_id),
    name TEXT NOT NULL,
    digest TEXT NOT NULL,
    source_type TEXT NOT NULL,
    source TEXT NOT NULL,
    schema_json TEXT NOT NULL,
    profile TEXT NOT NULL,
    UNIQUE (experiment_id, name, digest)
);
CREATE TABLE IF NOT EXISTS trk_run_inputs (
    run_id TEXT NOT NULL REFERENCES trk_runs (run_id) ON DELETE CASCADE,
    dataset_id BIGINT NOT NULL REFERENCES trk_datasets (dataset_id),
    context TEXT NOT NULL,
    tags_json TEXT NOT NULL,
    PRIMARY KEY (run_id, dataset_id)
);
CREATE TABLE IF NOT EXISTS trk_logged_models (
    model_id TEXT PRIMARY KEY,
    experiment_id BIGINT NOT NULL REFERENCES trk_experiments (experiment_id),
    project TEXT NOT NULL,
    name TEXT NOT NULL,
    artifact_location TEXT NOT NULL,
    creation_timestamp_ms BIGINT NOT NULL,
    last_updated_timestamp_ms BIGINT NOT NULL,
    status TEXT NOT NULL,
    status_message TEXT NOT NULL,
    model_type TEXT NOT NULL,
    source_run_id TEXT NOT NULL,
    lifecycle_stage TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS trk_logged_models_by_experiment
    ON trk_logged_models (experiment_id, creation_timestamp_ms);
CREATE TABLE IF NOT EXISTS trk_logged_model_params (
    model_id TEXT NOT NULL REFERENCES trk_logged_models (model_id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (model_id, key)
);
CREATE TABLE IF NOT EXISTS trk_logged_model_tags (
    model_id TEXT NOT NULL REFERENCES trk_logged_models (model_id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (model_id, key)
);
CREATE TABLE IF NOT EXISTS trk_logged_model_metrics (
    model_id TEXT NOT NULL REFERENCES trk_logged_models (model_id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value {float} NOT NULL,
    is_nan INTEGER NOT NULL,
    timestamp BIGINT NOT NULL,
    step BIGINT NOT NULL,
    run_id TEXT NOT NULL,
    dataset_name TEXT NOT NULL,
    dataset_digest TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS trk_logged_model_metrics_by_model
    ON trk_logged_model_metrics (model_id, key);
CREATE TABLE IF NOT EXISTS trk_run_models (
    run_id TEXT NOT NULL REFERENCES trk_runs (run_id) ON DELETE CASCADE,
    model_id TEXT NOT NULL,
    direction TEXT NOT NULL,
    step BIGINT NOT NULL,
    PRIMARY KEY (run_id, model_id, direction)
);
CREATE TABLE IF NOT EXISTS trk_registered_models (
    model_pk {id},
    project TEXT NOT NULL,
    name TEXT NOT NULL,
    creation_timestamp BIGINT NOT NULL,
    last_updated_timestamp BIGINT NOT NULL,
    user_id TEXT NOT NULL,
    description TEXT NOT NULL,
    next_version BIGINT NOT NULL,
    UNIQUE (project, name)
);
CREATE TABLE IF NOT EXISTS trk_registered_model_tags (
    model_pk BIGINT NOT NULL REFERENCES trk_registered_models (model_pk) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (model_pk, key)
);
CREATE TABLE IF NOT EXISTS trk_model_versions (
    model_pk BIGINT NOT NULL REFERENCES trk_registered_models (model_pk) ON DELETE CASCADE,
    version BIGINT NOT NULL,
    creation_timestamp BIGINT NOT NULL,
    last_updated_timestamp BIGINT NOT NULL,
    user_id TEXT NOT NULL,
    current_stage TEXT NOT NULL,
    description TEXT NOT NULL,
    source TEXT NOT NULL,
    run_id TEXT NOT NULL,
    run_link TEXT NOT NULL,
    status TEXT NOT NULL,
    status_message TEXT NOT NULL,
    storage_location TEXT NOT NULL,
    model_id TEXT NOT NULL,
    PRIMARY KEY (model_pk, version)
);
CREATE INDEX IF NOT EXISTS trk_model_versions_by_run ON trk_model_versions (run_id);
CREATE TABLE IF NOT EXISTS trk_model_version_tags (
    model_pk BIGINT NOT NULL,
    version BIGINT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (model_pk, version, key),
    FOREIGN KEY (model_pk, version) REFERENCES trk_model_versions (model_pk, version)
        ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS trk_model_aliases (
    model_pk BIGINT NOT NULL REFERENCES trk_registered_models (model_pk) ON DELETE CASCADE,
    alias TEXT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (model_pk, alias),
    FOREIGN KEY (model_pk, version) REFERENCES trk_model_versions (model_pk, version)
        ON DELETE CASCADE
)
"""


def statements(ddl: dict[str, str]) -> list[str]:
    """Return the DDL statements, with a driver's dialect words filled in."""
    return [s.strip().format(**ddl) for s in _TABLES.split(";") if s.strip()]
