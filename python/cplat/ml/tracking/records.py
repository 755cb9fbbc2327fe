"""Records of the tracking store and their MLflow REST JSON shapes.

Times are integer milliseconds since the epoch, as MLflow counts them. Every record knows its
project only where a caller needs it to decide who may see it; the JSON never shows it (the
MLflow protocol has no such field).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DatasetInput",
    "Experiment",
    "LoggedModel",
    "Metric",
    "ModelVersion",
    "RegisteredModel",
    "Run",
    "RunOwner",
    "metric_value_json",
    "tags_json",
]

ACTIVE = "active"
DELETED = "deleted"
STAGES = ("None", "Staging", "Production", "Archived")
RUN_STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")
LOGGED_MODEL_STATUSES = (
    "LOGGED_MODEL_STATUS_UNSPECIFIED",
    "LOGGED_MODEL_PENDING",
    "LOGGED_MODEL_READY",
    "LOGGED_MODEL_UPLOAD_FAILED",
)


def tags_json(tags: dict[str, str]) -> list[dict[str, str]]:
    """Return ``[{"key", "value"}, ...]`` as MLflow lists tags and params."""
    return [{"key": k, "value": v} for k, v in tags.items()]


def metric_value_json(value: float) -> float | str:
    """Return a metric value as protobuf JSON writes doubles (``"NaN"``, ``"Infinity"``)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


@dataclass(frozen=True)
class RunOwner:
    """Where a run belongs: what the artifact proxy needs to check access to its files.

    Attributes
    ----------
    run_id
        The run.
    project
        The cplat project owning the run's experiment.
    experiment_id
        The experiment (decimal text, as MLflow spells ids).
    artifact_uri
        The run's artifact root, ``mlflow-artifacts:/<experiment_id>/<run_id>/artifacts``.
    lifecycle_stage
        ``active`` or ``deleted``.
    """

    run_id: str
    project: str
    experiment_id: str
    artifact_uri: str
    lifecycle_stage: str


@dataclass(frozen=True)
class Experiment:
    """An experiment of one project."""

    experiment_id: str
    project: str
    name: str
    artifact_location: str
    lifecycle_stage: str
    creation_time: int
    last_update_time: int
    tags: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Return the MLflow ``Experiment`` message as JSON."""
        return {
            "experiment_id": self.experiment_id,
            "name": self.name,
            "artifact_location": self.artifact_location,
            "lifecycle_stage": self.lifecycle_stage,
            "creation_time": self.creation_time,
            "last_update_time": self.last_update_time,
            "tags": tags_json(self.tags),
        }


@dataclass(frozen=True)
class Metric:
    """One point of a metric (or the latest point, in a run's data)."""

    key: str
    value: float
    timestamp: int
    step: int

    def to_json(self) -> dict[str, Any]:
        """Return the MLflow ``Metric`` message as JSON."""
        return {
            "key": self.key,
            "value": metric_value_json(self.value),
            "timestamp": self.timestamp,
            "step": self.step,
        }


@dataclass(frozen=True)
class DatasetInput:
    """A dataset a run used, with the input's tags (such as ``mlflow.data.context``)."""

    name: str
    digest: str
    source_type: str
    source: str
    schema: str
    profile: str
    tags: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Return the MLflow ``DatasetInput`` message as JSON."""
        dataset: dict[str, Any] = {
            "name": self.name,
            "digest": self.digest,
            "source_type": self.source_type,
            "source": self.source,
        }
        if self.schema:
            dataset["schema"] = self.schema
        if self.profile:
            dataset["profile"] = self.profile
        return {"tags": tags_json(self.tags), "dataset": dataset}


@dataclass(frozen=True)
class Run:
    """A run with its data, inputs and outputs."""

    run_id: str
    experiment_id: str
    project: str
    run_name: str
    user_id: str
    status: str
    start_time: int
    end_time: int | None
    artifact_uri: str
    lifecycle_stage: str
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: list[Metric] = field(default_factory=list)
    datasets: list[DatasetInput] = field(default_factory=list)
    model_inputs: list[str] = field(default_factory=list)
    model_outputs: list[tuple[str, int]] = field(default_factory=list)

    def info_json(self) -> dict[str, Any]:
        """Return the MLflow ``RunInfo`` message as JSON."""
        info: dict[str, Any] = {
            "run_id": self.run_id,
            "run_uuid": self.run_id,
            "run_name": self.run_name,
            "experiment_id": self.experiment_id,
            "user_id": self.user_id,
            "status": self.status,
            "start_time": self.start_time,
            "artifact_uri": self.artifact_uri,
            "lifecycle_stage": self.lifecycle_stage,
        }
        if self.end_time is not None:
            info["end_time"] = self.end_time
        return info

    def to_json(self) -> dict[str, Any]:
        """Return the MLflow ``Run`` message as JSON."""
        return {
            "info": self.info_json(),
            "data": {
                "metrics": [m.to_json() for m in self.metrics],
                "params": tags_json(self.params),
                "tags": tags_json(self.tags),
            },
            "inputs": {
                "dataset_inputs": [d.to_json() for d in self.datasets],
                "model_inputs": [{"model_id": m} for m in self.model_inputs],
            },
            "outputs": {
                "model_outputs": [{"model_id": m, "step": s} for m, s in self.model_outputs]
            },
        }


@dataclass(frozen=True)
class ModelVersion:
    """A version of a registered model.

    ``storage_location`` is where the version's files are (``get-download-uri``): the source
    resolved when the version was created (a logged model's or a run's artifact folder).
    """

    name: str
    version: int
    project: str
    creation_timestamp: int
    last_updated_timestamp: int
    user_id: str
    current_stage: str
    description: str
    source: str
    run_id: str
    run_link: str
    status: str
    status_message: str
    storage_location: str
    model_id: str
    tags: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Return the MLflow ``ModelVersion`` message as JSON."""
        out: dict[str, Any] = {
            "name": self.name,
            "version": str(self.version),
            "creation_timestamp": self.creation_timestamp,
            "last_updated_timestamp": self.last_updated_timestamp,
            "user_id": self.user_id,
            "current_stage": self.current_stage,
            "description": self.description,
            "source": self.source,
            "run_id": self.run_id,
            "run_link": self.run_link,
            "status": self.status,
            "tags": tags_json(self.tags),
            "aliases": list(self.aliases),
        }
        if self.status_message:
            out["status_message"] = self.status_message
        if self.model_id:
            out["model_id"] = self.model_id
        return out


@dataclass(frozen=True)
class RegisteredModel:
    """A registered model of one project, with its aliases and latest version per stage."""

    name: str
    project: str
    creation_timestamp: int
    last_updated_timestamp: int
    user_id: str
    description: str
    tags: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, int] = field(default_factory=dict)
    latest_versions: list[ModelVersion] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Return the MLflow ``RegisteredModel`` message as JSON."""
        return {
            "name": self.name,
            "creation_timestamp": self.creation_timestamp,
            "last_updated_timestamp": self.last_updated_timestamp,
            "user_id": self.user_id,
            "description": self.description,
            "tags": tags_json(self.tags),
            "aliases": [{"alias": a, "version": str(v)} for a, v in self.aliases.items()],
            "latest_versions": [v.to_json() for v in self.latest_versions],
        }


@dataclass(frozen=True)
class LoggedModel:
    """A model logged by the 3.x client (``mlflow.<flavor>.log_model``)."""

    model_id: str
    experiment_id: str
    project: str
    name: str
    artifact_location: str
    creation_timestamp_ms: int
    last_updated_timestamp_ms: int
    status: str
    status_message: str
    model_type: str
    source_run_id: str
    lifecycle_stage: str
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    registrations: list[tuple[str, int]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Return the MLflow ``LoggedModel`` message as JSON."""
        info: dict[str, Any] = {
            "model_id": self.model_id,
            "experiment_id": self.experiment_id,
            "name": self.name,
            "artifact_uri": self.artifact_location,
            "creation_timestamp_ms": self.creation_timestamp_ms,
            "last_updated_timestamp_ms": self.last_updated_timestamp_ms,
            "status": self.status,
            "tags": tags_json(self.tags),
            "registrations": [{"name": n, "version": str(v)} for n, v in self.registrations],
        }
        for key in ("status_message", "model_type", "source_run_id"):
            if getattr(self, key):
                info[key] = getattr(self, key)
        return {"info": info, "data": {"params": tags_json(self.params), "metrics": self.metrics}}
