"""MLflow model registry endpoints: registered models, versions, tags, aliases and stages.

Registered models belong to the caller's token's project: a name is looked up there (so
``models:/churn@champion`` means the caller's project's ``churn``). viewer reads, member writes,
admin deletes models and versions.

Per-model permissions: a registered model whose tag ``cplat.maintainers`` holds a
comma-separated list of user names is *guarded*: only those users (and the project's admins,
and cluster admins) may add, change or delete its versions, move or delete its aliases,
transition stages, or change that tag. Other members keep reading it and may still edit its
description and other tags. On a model without the tag, its creator or an admin may set it.
"""

from __future__ import annotations

from typing import Any

from cplat.ml.tracking import ModelVersion, RegisteredModel
from cplat_server.views.mlflow_compat.common import (
    Call,
    MlflowError,
    endpoint,
    invalid,
    missing,
    page,
    require,
)

#: The tag that names who may change a model's versions, aliases and stages.
MAINTAINERS_TAG = "cplat.maintainers"


def maintainers(tags: dict[str, str]) -> set[str]:
    """Return the users a model's ``cplat.maintainers`` tag names (empty: not guarded)."""
    return {u.strip() for u in tags.get(MAINTAINERS_TAG, "").split(",") if u.strip()}


async def model(call: Call, role: str) -> RegisteredModel:
    """Return the registered model named by ``name`` in the caller's project."""
    name = call.text("name", required=True)
    require(call, call.who.project, role, f"registered model {name!r}")
    found = await call.store.get_registered_model(call.who.project, name)
    if found is None:
        raise missing(f"registered model {name!r}")
    call.target, call.project = f"registered model {name}", found.project
    return found


def guard(call: Call, rm: RegisteredModel, what: str) -> None:
    """Refuse a guarded change by someone the model's maintainers tag does not name."""
    users = maintainers(rm.tags)
    if not users or call.who.cluster_admin or call.who.role == "admin":
        return
    if call.who.user not in users:
        raise MlflowError(
            "PERMISSION_DENIED",
            f"{what} of registered model {rm.name!r} is restricted to its maintainers "
            f"(tag {MAINTAINERS_TAG}) and project admins",
        )


def _version(call: Call) -> int:
    value = call.body.get("version")
    text = str(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else ""
    if not (text.isascii() and text.isdigit()) or not 0 < len(text) <= 18:
        raise invalid("version must be a positive integer", "version")
    return int(text)


async def version(call: Call, role: str) -> tuple[RegisteredModel, ModelVersion]:
    """Return the model and the version named by ``name`` and ``version``."""
    number = _version(call)
    rm = await model(call, role)
    mv = await call.store.get_model_version(call.who.project, rm.name, number)
    if mv is None:
        raise missing(f"version {number} of registered model {rm.name!r}")
    call.target = f"registered model {rm.name} version {number}"
    return rm, mv


def _one(rm: RegisteredModel) -> dict[str, Any]:
    return {"registered_model": rm.to_json()}


@endpoint(write=True)
async def create_registered_model(call: Call) -> dict[str, Any]:
    """Create a registered model in the caller's project."""
    name = call.text("name", required=True)
    require(call, call.who.project, "member", "registered models")
    call.target, call.project = f"registered model {name}", call.who.project
    rm = await call.store.create_registered_model(
        call.who.project,
        name,
        call.who.user,
        description=call.text("description"),
        tags=dict(call.pairs("tags")),
    )
    return _one(rm)


@endpoint(write=False)
async def get_registered_model(call: Call) -> dict[str, Any]:
    """Get a registered model with its aliases and latest versions."""
    return _one(await model(call, "viewer"))


@endpoint(write=True)
async def rename_registered_model(call: Call) -> dict[str, Any]:
    """Rename a registered model (guarded: its versions' URIs change with it)."""
    rm = await model(call, "member")
    guard(call, rm, "renaming")
    new_name = call.text("new_name", required=True)
    return _one(await call.store.update_registered_model(rm.project, rm.name, new_name=new_name))


@endpoint(write=True)
async def update_registered_model(call: Call) -> dict[str, Any]:
    """Change a registered model's description."""
    rm = await model(call, "member")
    description = call.text("description") if call.has("description") else None
    return _one(await call.store.update_registered_model(rm.project, rm.name, description))


@endpoint(write=True)
async def delete_registered_model(call: Call) -> dict[str, Any]:
    """Delete a registered model and its versions (admins)."""
    rm = await model(call, "admin")
    await call.store.delete_registered_model(rm.project, rm.name)
    return {}


@endpoint(write=False)
async def search_registered_models(call: Call) -> dict[str, Any]:
    """Search the caller's project's registered models."""
    require(call, call.who.project, "viewer", "registered models")
    found, token = await call.store.search_registered_models(
        None if call.who.cluster_admin else [call.who.project],
        order_by=call.strings("order_by"),
        **call.search(),
    )
    return page("registered_models", found, token)


@endpoint(write=False)
async def get_latest_versions(call: Call) -> dict[str, Any]:
    """Return the latest version of each stage (or of the given stages)."""
    rm = await model(call, "viewer")
    found = await call.store.latest_versions(rm.project, rm.name, call.strings("stages"))
    return {"model_versions": [v.to_json() for v in found]}


@endpoint(write=True)
async def set_registered_model_tag(call: Call) -> dict[str, Any]:
    """Set a tag of a registered model (``cplat.maintainers`` is guarded)."""
    rm = await model(call, "member")
    key = call.text("key", required=True)
    if key == MAINTAINERS_TAG:
        _guard_maintainers(call, rm)
    await call.store.set_registered_model_tag(rm.project, rm.name, key, call.text("value"))
    return {}


def _guard_maintainers(call: Call, rm: RegisteredModel) -> None:
    if maintainers(rm.tags):
        guard(call, rm, "changing the maintainers")
    elif not (call.who.cluster_admin or call.who.role == "admin" or call.who.user == rm.user_id):
        raise MlflowError(
            "PERMISSION_DENIED",
            f"only the creator of registered model {rm.name!r} or a project admin may name "
            "its maintainers",
        )


@endpoint(write=True)
async def delete_registered_model_tag(call: Call) -> dict[str, Any]:
    """Delete a tag of a registered model."""
    rm = await model(call, "member")
    key = call.text("key", required=True)
    if key == MAINTAINERS_TAG:
        _guard_maintainers(call, rm)
    await call.store.delete_registered_model_tag(rm.project, rm.name, key)
    return {}


async def _storage(call: Call, project: str, source: str) -> tuple[str, str, str]:
    """Resolve a version's source: ``(storage location, run id, model id)``.

    ``runs:/<run>/<path>``, ``models:/<model id>`` and ``mlflow-artifacts:/<experiment>/...``
    must name something of the model's project (404 otherwise: the source cannot be used to
    learn of, or to reach, another project's files).
    """
    if source.startswith("runs:/"):
        run_id, _, path = source[len("runs:/") :].strip("/").partition("/")
        owner = await call.store.run_owner(run_id)
        if owner is None or owner.project != project:
            raise missing(f"run {run_id!r} of source {source!r}")
        return f"{owner.artifact_uri.rstrip('/')}/{path}".rstrip("/"), run_id, ""
    if source.startswith("models:/m-"):
        model_id = source[len("models:/") :].strip("/")
        found = await call.store.logged_model_owner(model_id)
        if found is None or found[0] != project:
            raise missing(f"logged model {model_id!r} of source {source!r}")
        return found[2], "", model_id
    if source.startswith("mlflow-artifacts:"):
        experiment_id = source[len("mlflow-artifacts:") :].lstrip("/").split("/", 1)[0]
        if await call.store.experiment_project(experiment_id) != project:
            raise missing(f"experiment {experiment_id!r} of source {source!r}")
    return source, "", ""


@endpoint(write=True)
async def create_model_version(call: Call) -> dict[str, Any]:
    """Register a new version (guarded) from a run's, a logged model's or other files."""
    rm = await model(call, "member")
    guard(call, rm, "registering versions")
    source = call.text("source", required=True)
    storage, run_from_source, model_from_source = await _storage(call, rm.project, source)
    run_id = call.text("run_id") or run_from_source
    if run_id:
        owner = await call.store.run_owner(run_id)
        if owner is None or owner.project != rm.project:
            raise missing(f"run {run_id!r}")
    model_id = call.text("model_id") or model_from_source
    if model_id and model_id != model_from_source:
        found = await call.store.logged_model_owner(model_id)
        if found is None or found[0] != rm.project:
            raise missing(f"logged model {model_id!r}")
    mv = await call.store.create_model_version(
        rm.project,
        rm.name,
        source,
        call.who.user,
        storage,
        run_id=run_id,
        run_link=call.text("run_link"),
        description=call.text("description"),
        model_id=model_id,
        tags=dict(call.pairs("tags")),
    )
    call.target = f"registered model {rm.name} version {mv.version}"
    return {"model_version": mv.to_json()}


@endpoint(write=False)
async def get_model_version(call: Call) -> dict[str, Any]:
    """Get a model version."""
    _, mv = await version(call, "viewer")
    return {"model_version": mv.to_json()}


@endpoint(write=True)
async def update_model_version(call: Call) -> dict[str, Any]:
    """Change a version's description (guarded)."""
    rm, mv = await version(call, "member")
    guard(call, rm, "changing versions")
    mv = await call.store.update_model_version(
        rm.project, rm.name, mv.version, call.text("description")
    )
    return {"model_version": mv.to_json()}


@endpoint(write=True)
async def delete_model_version(call: Call) -> dict[str, Any]:
    """Delete a version (admins, and guarded)."""
    rm, mv = await version(call, "admin")
    guard(call, rm, "deleting versions")
    await call.store.delete_model_version(rm.project, rm.name, mv.version)
    return {}


@endpoint(write=True)
async def transition_stage(call: Call) -> dict[str, Any]:
    """Move a version to None, Staging, Production or Archived (guarded)."""
    rm, mv = await version(call, "member")
    guard(call, rm, "moving versions between stages")
    mv = await call.store.transition_stage(
        rm.project,
        rm.name,
        mv.version,
        call.text("stage", required=True),
        call.flag("archive_existing_versions"),
    )
    return {"model_version": mv.to_json()}


@endpoint(write=False)
async def search_model_versions(call: Call) -> dict[str, Any]:
    """Search versions of the caller's project's models."""
    require(call, call.who.project, "viewer", "model versions")
    found, token = await call.store.search_model_versions(
        None if call.who.cluster_admin else [call.who.project],
        order_by=call.strings("order_by"),
        **call.search(),
    )
    return page("model_versions", found, token)


@endpoint(write=False)
async def get_download_uri(call: Call) -> dict[str, Any]:
    """Return where a version's files are (``mlflow-artifacts:/...``: the artifact proxy)."""
    _, mv = await version(call, "viewer")
    return {"artifact_uri": mv.storage_location}


@endpoint(write=True)
async def set_model_version_tag(call: Call) -> dict[str, Any]:
    """Set a tag of a version (guarded)."""
    rm, mv = await version(call, "member")
    guard(call, rm, "tagging versions")
    await call.store.set_model_version_tag(
        rm.project, rm.name, mv.version, call.text("key", required=True), call.text("value")
    )
    return {}


@endpoint(write=True)
async def delete_model_version_tag(call: Call) -> dict[str, Any]:
    """Delete a tag of a version (guarded)."""
    rm, mv = await version(call, "member")
    guard(call, rm, "tagging versions")
    await call.store.delete_model_version_tag(
        rm.project, rm.name, mv.version, call.text("key", required=True)
    )
    return {}


@endpoint(write=True)
async def set_alias(call: Call) -> dict[str, Any]:
    """Point an alias at a version (guarded)."""
    rm, mv = await version(call, "member")
    guard(call, rm, "moving aliases")
    await call.store.set_alias(rm.project, rm.name, call.text("alias", required=True), mv.version)
    return {}


@endpoint(write=True)
async def delete_alias(call: Call) -> dict[str, Any]:
    """Remove an alias (guarded)."""
    rm = await model(call, "member")
    guard(call, rm, "moving aliases")
    await call.store.delete_alias(rm.project, rm.name, call.text("alias", required=True))
    return {}


@endpoint(write=False)
async def get_by_alias(call: Call) -> dict[str, Any]:
    """Return the version an alias points at."""
    rm = await model(call, "viewer")
    mv = await call.store.version_by_alias(rm.project, rm.name, call.text("alias", required=True))
    return {"model_version": mv.to_json()}
