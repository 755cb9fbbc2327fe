"""Studies API: hyperparameter searches whose trials are jobs (see docs/hpo.md).

``POST /v1/studies`` creates a study, ``GET /v1/studies`` lists them, ``GET
/v1/studies/{name}`` shows one with its trials and best, ``DELETE /v1/studies/{name}`` stops
it. Studies belong to projects like jobs: viewers read, members create and stop, a study of
another project does not exist (404). The drivers run in the server's loop
(:func:`studies_context`) and submit trials as the creator's jobs through the same store write
and controller hand-over as ``POST /v1/jobs``, each under an idempotency key of its trial.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from cplat.errors import InputError
from cplat.live.spec import JobSpec
from cplat.ml.hpo.driver import TRACKING_KEY, JobStatus
from cplat.ml.hpo.runner import StudyRunner
from cplat.ml.hpo.study import StudyConfig, open_storage
from cplat.store.base import AuditIn, IdempotencyIn, NewJob
from cplat_server.errors import ApiError, bad_request, conflict, forbidden, not_found
from cplat_server.keys import (
    CONFIG,
    CONTROLLER,
    STORE,
    audit,
    json_response,
    path_name,
    principal,
    query_name,
    read_json,
)
from cplat_server.schemas import JOB_SUBMIT, NAME, NAME_FILTER
from cplat_server.views.jobs import submission_fingerprint
from cplat_server.views.mlflow_compat.common import TRACKING

__all__ = [
    "STUDIES",
    "STUDY",
    "STUDY_CREATE",
    "STUDY_LIST",
    "ServiceJobs",
    "create",
    "get_study",
    "list_studies",
    "stop",
    "studies_context",
]

log = logging.getLogger("cplat.server")

#: The studies of the app and the task driving them.
STUDIES = web.AppKey("studies", StudyRunner)
#: A study's name (as in a path): as a job's, but at most 63 characters.
STUDY_NAME = "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"

_JOB_PROPS = {k: v for k, v in JOB_SUBMIT["properties"].items() if k not in ("name", "project")}
STUDY_CREATE: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "space", "metric", "job"],
    "properties": {
        "name": {"type": "string", "pattern": STUDY_NAME},
        "project": {"type": "string", "pattern": NAME},
        # The space's own reader names the bad field (space.params.lr.low) more precisely
        # than a schema could.
        "space": {"type": "object", "maxProperties": 2},
        "metric": {"type": "string", "minLength": 1, "maxLength": 250},
        "direction": {"type": "string", "enum": ["minimize", "maximize"]},
        "sampler": {"type": "string", "maxLength": 32},
        "pruner": {"type": "string", "maxLength": 32},
        "n_trials": {"type": "integer", "minimum": 1, "maximum": 10_000},
        "parallel": {"type": "integer", "minimum": 1, "maximum": 256},
        "seed": {
            "anyOf": [{"type": "integer", "minimum": 0, "maximum": 2**32 - 1}, {"type": "null"}]
        },
        "experiment": {"type": "string", "minLength": 1, "maxLength": 250},
        "job": {
            "type": "object",
            "additionalProperties": False,
            "required": ["command"],
            "properties": _JOB_PROPS,
        },
    },
}
_TRIAL = {
    "type": "object",
    "properties": {
        "number": {"type": "integer"},
        "state": {"type": "string", "enum": ["RUNNING", "COMPLETE", "PRUNED", "FAIL", "WAITING"]},
        "params": {"type": "object"},
        "value": {"type": ["number", "null"]},
        "last_step": {"type": ["integer", "null"]},
        "last_value": {"type": ["number", "null"]},
        "intermediate": {"type": "object"},
        "job_id": {"type": ["integer", "null"]},
        "run_id": {"type": ["string", "null"]},
        "attempt": {"type": ["integer", "null"]},
        "reason": {"type": ["string", "null"]},
        "started_at": {"type": ["number", "null"]},
        "finished_at": {"type": ["number", "null"]},
    },
}
STUDY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "project": {"type": "string"},
        "user": {"type": "string"},
        "state": {"type": "string", "enum": ["running", "stopping", "stopped", "finished"]},
        "metric": {"type": "string"},
        "direction": {"type": "string"},
        "sampler": {"type": "string"},
        "pruner": {"type": "string"},
        "n_trials": {"type": "integer"},
        "parallel": {"type": "integer"},
        "experiment": {"type": "string"},
        "parent_run_id": {"type": ["string", "null"]},
        "space": {"type": "object"},
        "command": {},
        "created_at": {"type": "number"},
        "counts": {"type": "object"},
        "best": {"type": ["object", "null"]},
        "trials": {"type": "array", "items": _TRIAL},
    },
}
STUDY_LIST = {
    "type": "object",
    "properties": {"studies": {"type": "array", "items": STUDY}},
}


class ServiceJobs:
    """Trials as the service's jobs: the store write and controller hand-over of a submission.

    Parameters
    ----------
    app
        The running app (its store, controller and settings).
    """

    def __init__(self, app: web.Application) -> None:
        self.app = app

    async def submit(self, cfg: StudyConfig, name: str, body: dict[str, Any], key: str) -> int:
        """Create and queue a trial's job as the study's creator (see :class:`JobBackend`).

        Raises
        ------
        InputError
            For a job the spec refuses (the study's template was checked at creation, so
            only what a trial added can be at fault).
        """
        fields = dict(body)
        # The trial's run is the driver's to name (a user's job body cannot carry one).
        link = fields.pop(TRACKING_KEY, None)
        spec = JobSpec.from_body({**fields, "name": name}).to_dict()
        if link is not None:
            spec[TRACKING_KEY] = dict(link)
        store = self.app[STORE]
        now = time.time()
        job = NewJob(
            project=cfg.project,
            user=cfg.user,
            name=name,
            spec=spec,
            submitted_at=now,
            token_id=cfg.token_id,
            token_expires_at=cfg.token_expires_at,
        )
        entry = AuditIn(
            at=now,
            user=cfg.user,
            project=cfg.project,
            action="POST /v1/studies/{name} trial",
            target="job/{id}",
            status=201,
            detail={"study": cfg.name},
        )
        fingerprint = submission_fingerprint(cfg.project, name, spec)
        ttl = self.app[CONFIG].idempotency_ttl
        done = await store.create_job_idempotent(
            job,
            IdempotencyIn(cfg.project, cfg.user, key, fingerprint, now, now + ttl),
            audit=[entry],
        )
        if done.created:
            self.app[CONTROLLER].accept([done.job])
        elif done.fingerprint != fingerprint:
            raise InputError(
                f"the trial's idempotency key {key!r} was used for another job", field="name"
            )
        return done.job.id

    async def status(self, job_id: int) -> JobStatus | None:
        """Return a job's state and attempt."""
        rec = await self.app[STORE].get_job(job_id)
        if rec is None:
            return None
        return JobStatus(rec.state, rec.attempt, rec.reason or "")

    async def cancel(self, job_id: int) -> None:
        """Cancel a trial's job as ``POST /v1/jobs/{id}/cancel`` does (SIGTERM, grace)."""
        if await self.app[CONTROLLER].cancel(job_id):
            rec = await self.app[STORE].get_job(job_id)
            if rec is not None:
                await self.app[STORE].append_audit(
                    [
                        AuditIn(
                            at=time.time(),
                            user=rec.user,
                            project=rec.project,
                            action="POST /v1/jobs/{id}/cancel",
                            target=f"job/{job_id}",
                            status=200,
                            detail={"by": "study"},
                        )
                    ]
                )


def _runner(request: web.Request) -> StudyRunner:
    if STUDIES not in request.app:
        raise ApiError(
            503, "unavailable", "studies need Optuna on the server (pip install 'cplat[hpo]')"
        )
    return request.app[STUDIES]


def _project(request: web.Request) -> str:
    """Return the project a call names (``?project=``, for cluster admins), else the token's."""
    who = principal(request)
    project = query_name(request, "project", NAME_FILTER) or who.project
    if not who.can_see(project):
        raise not_found("study")
    return project


def _name(request: web.Request) -> str:
    return path_name(request, "name", STUDY_NAME, "study")


async def create(request: web.Request) -> web.Response:
    """``POST /v1/studies``."""
    who = principal(request)
    body = await read_json(request, STUDY_CREATE)
    project = body.get("project", who.project)
    if not who.cluster_admin and project != who.project:
        raise forbidden(f"cannot create in project {project!r} with a token for {who.project!r}")
    who.require(project, "member", "project")
    try:
        typed = JobSpec.from_body({**body["job"], "name": "trial"})
    except InputError as exc:
        raise bad_request(exc.message, f"job.{exc.field}" if exc.field else "job") from None
    if request.app[CONFIG].unschedulable == "reject":
        why = request.app[CONTROLLER].infeasible(typed)
        if why is not None:
            raise bad_request(why.message, f"job.{why.field}" if why.field else "job")
    try:
        cfg = StudyConfig.from_body(body, project, who.user, who.token_id, who.expires_at)
    except InputError as exc:
        raise bad_request(exc.message, exc.field) from None
    audit(request, f"study/{cfg.name}", project)
    try:
        out = _runner(request).create(cfg)
    except InputError as exc:
        raise conflict(exc.message, exc.field) from None
    return json_response(out, status=201)


async def list_studies(request: web.Request) -> web.Response:
    """``GET /v1/studies``: the caller's project's studies (every project's for admins)."""
    who = principal(request)
    project = query_name(request, "project", NAME_FILTER)
    if who.cluster_admin:
        projects = None if project is None else [project]
    else:
        projects = [who.project] if project in (None, who.project) else []
    found = _runner(request).list(projects) if projects != [] else []
    return json_response({"studies": found})


async def get_study(request: web.Request) -> web.Response:
    """``GET /v1/studies/{name}``: settings, counts, best and every trial."""
    name = _name(request)
    out = _runner(request).get(_project(request), name)
    if out is None:
        raise not_found("study")
    return json_response(out)


async def stop(request: web.Request) -> web.Response:
    """``DELETE /v1/studies/{name}``: stop a study (its running trials' jobs are cancelled).

    The study and its trials stay readable; stopping an ended study changes nothing.
    """
    name = _name(request)
    project = _project(request)
    runner = _runner(request)
    if runner.get(project, name, trials=False) is None:
        raise not_found("study")
    principal(request).require(project, "member", "study")
    audit(request, f"study/{name}", project)
    out = runner.stop(project, name)
    assert out is not None
    return json_response(out)


async def studies_context(app: web.Application) -> AsyncIterator[None]:
    """Open the studies' journal and drive the studies for the app's life (a cleanup context).

    It comes after the service's store, controller and tracking store are up. Studies left
    running by an earlier server (``kill -9`` included) are taken up again on start.
    """
    cfg = app[CONFIG]
    try:
        storage = open_storage(cfg.data_dir)
    except ImportError:
        # Studies need Optuna; the rest of the service does not.
        log.warning("studies are off: Optuna is not installed (pip install 'cplat[hpo]')")
        yield
        return
    ctrl = app[CONTROLLER]
    runner = StudyRunner(
        storage, ServiceJobs(app), app[TRACKING], lambda: ctrl.server_url, tick=0.5
    )
    app[STUDIES] = runner
    task = asyncio.create_task(runner.run(), name="cplat-studies")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
