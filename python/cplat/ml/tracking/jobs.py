"""Jobs and their runs: ``cplat job submit --experiment`` records every job as a tracking run.

A job submitted with an ``experiment`` gets a run before it is stored, in the job's project
(the experiment is created on first use). Its tasks log to that run with the unmodified MLflow
client, which reads four variables the agent sets (:func:`tracking_env`):
``MLFLOW_TRACKING_URI`` (the service's URL as the agent reaches it, as ``CPLAT_SERVER``),
``MLFLOW_RUN_ID``, ``MLFLOW_EXPERIMENT_ID`` and ``MLFLOW_TRACKING_TOKEN``: the job's own token,
which for such a job carries the claim ``run`` (:data:`RUN_CLAIM`) and which the MLflow
endpoints accept for writes to that run only (:func:`check_run_scope`).

The run follows the job (:class:`JobRunLinker`): SCHEDULED while the job waits, RUNNING while
it runs, then FINISHED (SUCCEEDED), FAILED or KILLED (CANCELLED). A requeued job (preempted,
its node lost, restarted after a failure) goes on with the same run: the run goes back to
SCHEDULED and its tags count the attempt and the requeues. Tags:

=========================== ===========================================================
``cplat.job_id``            the job
``cplat.job_name``          its name
``cplat.attempt``           the attempt that last started (1, 2, ...)
``cplat.requeues``          how often it was requeued; ``cplat.requeue_reason`` the last why
``cplat.nodes``             nodes of the last attempt, comma-separated
``cplat.gpus``              GPUs of the last attempt (count); ``cplat.gpu_models`` their models
``cplat.queue_wait_s``      seconds from submission to the first start
``cplat.job_state``         the job's final state; ``cplat.job_reason`` why; ``cplat.exit_code``
``cplat.command``           the command (JSON: a string or an argument list)
``cplat.resources``         the tasks and what each needs (JSON, as the API's ``tasks``)
``cplat.job_spec``          priority, gang, max_runtime, checkpoint, workdir, on_failure,
                            max_restarts, env_names (JSON; env VALUES are never recorded)
``cplat.from_run``          the run this one re-runs (``cplat job submit --from-run``)
``cplat.snapshot.*``        the environment snapshot (:mod:`cplat.ml.tracking.snapshot`)
=========================== ===========================================================

plus MLflow's own ``mlflow.user``, ``mlflow.source.type`` (``JOB``), ``mlflow.source.name``
(the command) and ``mlflow.source.git.commit``. The whole snapshot is also the artifact
:data:`SNAPSHOT_ARTIFACT` of the run when the service gives the linker its artifact storage.

Nothing here speaks HTTP. The service calls :meth:`JobRunLinker.on_submit` from the submit
view, keeps the returned :meth:`RunLink.spec_entry` in the job's spec under
:data:`SPEC_KEY`, and feeds the controller's job events to :meth:`JobRunLinker.notify`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import shlex
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from cplat.errors import InputError
from cplat.ml.tracking.errors import TrackingError
from cplat.ml.tracking.snapshot import check_snapshot, snapshot_tags

if TYPE_CHECKING:
    from cplat.ml.tracking.artifacts import ArtifactStore
    from cplat.ml.tracking.store import TrackingStore
    from cplat.store.base import JobRecord, NodeRecord

__all__ = [
    "PERMISSION_DENIED",
    "RUN_CLAIM",
    "SNAPSHOT_ARTIFACT",
    "SPEC_KEY",
    "STATUS_OF_JOB",
    "ExperimentRequest",
    "JobRunLinker",
    "JobSource",
    "RunLink",
    "assignment_tracking",
    "check_run_scope",
    "parse_experiment",
    "run_claim",
    "run_scope_target",
    "tracking_env",
]

log = logging.getLogger("cplat.ml.tracking.jobs")

#: The JWT claim of a job token that holds the job's run id: such a token may write to that
#: run only (reads are those of a project member).
RUN_CLAIM = "run"
#: Key of the stored job spec that holds the job's run (``{"experiment", "experiment_id",
#: "run_id"}``).
SPEC_KEY = "tracking"
#: Where the snapshot goes among the run's artifacts.
SNAPSHOT_ARTIFACT = "cplat/snapshot.json"
#: MLflow's error code (HTTP 403) for a write the token may not make.
PERMISSION_DENIED = "PERMISSION_DENIED"
#: The run status of each job state (PENDING and PREEMPTED: queued again).
STATUS_OF_JOB = {
    "PENDING": "SCHEDULED",
    "SCHEDULED": "SCHEDULED",
    "PREEMPTED": "SCHEDULED",
    "RUNNING": "RUNNING",
    "SUCCEEDED": "FINISHED",
    "FAILED": "FAILED",
    "CANCELLED": "KILLED",
}
_FINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_EXPERIMENT_ID = re.compile(r"^[0-9]{1,18}$")
_TAG_LIMIT = 8000
_MAX_EXPERIMENT_NAME = 500
_MAX_RUN_NAME = 250
#: How long an event handler waits for the store to show the change an event announces:
#: the controller publishes a change when it queues the write, not when it commits.
_SETTLE_WAIT, _SETTLE_POLL = 5.0, 0.05


class JobSource(Protocol):
    """What the linker reads of the service's store (``cplat.store.base.Store`` has it)."""

    async def get_job(self, job_id: int) -> JobRecord | None:
        """Return a job, or None."""

    async def get_node(self, name: str) -> NodeRecord | None:
        """Return a node, or None."""


@dataclass(frozen=True)
class ExperimentRequest:
    """The ``experiment`` field of a submission, checked."""

    name: str
    run_name: str = ""
    snapshot: dict[str, Any] | None = None
    from_run: str = ""


@dataclass(frozen=True)
class RunLink:
    """A job's run: what the job's spec keeps under :data:`SPEC_KEY`."""

    experiment: str
    experiment_id: str
    run_id: str

    def spec_entry(self) -> dict[str, str]:
        """Return the stored form (``spec["tracking"]``)."""
        return {
            "experiment": self.experiment,
            "experiment_id": self.experiment_id,
            "run_id": self.run_id,
        }


def _text(value: Any, field: str, limit: int, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InputError(f"{field} must be a string", field=field)
    if not empty and not value.strip():
        raise InputError(f"{field} must not be empty", field=field)
    if len(value) > limit:
        raise InputError(f"{field} is longer than {limit} characters", field=field)
    if any(ord(c) < 32 for c in value):
        raise InputError(f"{field} must not contain control characters", field=field)
    return value


def parse_experiment(value: Any, field: str = "experiment") -> ExperimentRequest:
    """Check the ``experiment`` field of a job submission.

    It is an experiment name, or ``{"name", "run_name"?, "snapshot"?, "from_run"?}``.

    Raises
    ------
    InputError
        Naming the field at fault (``experiment.name``, ``experiment.snapshot.git.commit``...).
    """
    if isinstance(value, str):
        return ExperimentRequest(_text(value, field, _MAX_EXPERIMENT_NAME))
    if not isinstance(value, dict):
        raise InputError(f"{field} must be an experiment name or an object", field=field)
    unknown = sorted(set(value) - {"name", "run_name", "snapshot", "from_run"})
    if unknown:
        raise InputError(f"{field} has unknown field {unknown[0]!r}", field=f"{field}.{unknown[0]}")
    if "name" not in value:
        raise InputError(f"{field}.name is required", field=f"{field}.name")
    name = _text(value["name"], f"{field}.name", _MAX_EXPERIMENT_NAME)
    run_name = value.get("run_name")
    if run_name is not None:
        run_name = _text(run_name, f"{field}.run_name", _MAX_RUN_NAME)
    from_run = value.get("from_run")
    if from_run is not None and (not isinstance(from_run, str) or not _RUN_ID.match(from_run)):
        raise InputError(
            f"{field}.from_run must be a run id (32 hex digits)", field=f"{field}.from_run"
        )
    snap = value.get("snapshot")
    return ExperimentRequest(
        name,
        run_name or "",
        None if snap is None else check_snapshot(snap, f"{field}.snapshot"),
        from_run or "",
    )


def run_claim(spec: Mapping[str, Any]) -> str:
    """Return the run id a job's token must carry as :data:`RUN_CLAIM` ('' for none)."""
    link = spec.get(SPEC_KEY)
    if isinstance(link, Mapping) and isinstance(link.get("run_id"), str):
        return str(link["run_id"])
    return ""


def assignment_tracking(spec: Mapping[str, Any]) -> dict[str, str] | None:
    """Return the ``tracking`` entry of a task assignment for a job's spec (None: no run)."""
    link = spec.get(SPEC_KEY)
    if not isinstance(link, Mapping):
        return None
    run_id, exp_id = link.get("run_id"), link.get("experiment_id")
    if not isinstance(run_id, str) or not isinstance(exp_id, str):
        return None
    return {"run_id": run_id, "experiment_id": exp_id}


def tracking_env(tracking: Any, server: str, token: str | None) -> dict[str, str]:
    """Return the MLflow variables of a task whose assignment carries ``tracking``.

    Parameters
    ----------
    tracking
        The assignment's ``tracking`` entry (``{"run_id", "experiment_id"}``), or None.
    server
        The service's URL as the agent reaches it (what ``CPLAT_SERVER`` holds).
    token
        The job's token (run-scoped for such a job); ``MLFLOW_TRACKING_TOKEN`` is left out
        without one.

    Returns
    -------
    dict
        Empty without ``tracking``. These names win over the job's own ``env``: a job may not
        point its run's credentials elsewhere.

    Raises
    ------
    ValueError
        For a malformed ``tracking`` entry (the launcher refuses the assignment).
    """
    if tracking is None:
        return {}
    if not isinstance(tracking, Mapping):
        raise ValueError("bad assignment: tracking must be an object")
    run_id, exp_id = tracking.get("run_id"), tracking.get("experiment_id")
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise ValueError("bad assignment: tracking.run_id must be 32 hex digits")
    if not isinstance(exp_id, str) or not _EXPERIMENT_ID.match(exp_id):
        raise ValueError("bad assignment: tracking.experiment_id must be digits")
    env = {"MLFLOW_TRACKING_URI": server, "MLFLOW_RUN_ID": run_id, "MLFLOW_EXPERIMENT_ID": exp_id}
    if token:
        env["MLFLOW_TRACKING_TOKEN"] = token
    return env


def check_run_scope(scope_run: str, target_run: str | None, what: str) -> None:
    """Refuse a write by a run-scoped token to anything but its run.

    The MLflow endpoints call this on every write when the caller's token carries
    :data:`RUN_CLAIM`: with the run the write changes (a run endpoint's ``run_id``; a logged
    model's ``source_run_id``; the run of an artifact path ``<exp>/<run>/artifacts/...`` or
    of the logged model of ``<exp>/models/<model>/...``), or None for writes that change no
    run (experiments, new runs, deletions and restores, the model registry).

    Parameters
    ----------
    scope_run
        The token's run claim ('' for a token without one: nothing is refused).
    target_run
        The run the write changes, or None.
    what
        The object written, for the message.

    Raises
    ------
    TrackingError
        ``PERMISSION_DENIED`` (HTTP 403) when the write is not to ``scope_run``.
    """
    if not scope_run or target_run == scope_run:
        return
    raise TrackingError(
        PERMISSION_DENIED,
        f"this token belongs to the job of run {scope_run} and may write only to that run, "
        f"not to {what}",
    )


#: MLflow endpoints (after the ``/api/2.0/mlflow`` prefix) that write to the run named by the
#: body's ``run_id``.
_RUN_WRITES = frozenset(
    f"/runs/{verb}"
    for verb in (
        "update", "log-metric", "log-parameter", "set-tag", "delete-tag", "log-batch",
        "log-inputs", "outputs", "log-model",
    )
)  # fmt: skip
_API_PREFIXES = ("/api/2.0/mlflow", "/ajax-api/2.0/mlflow")
_ARTIFACTS_PREFIX = "/api/2.0/mlflow-artifacts/artifacts/"
_LOGGED_MODEL = re.compile(r"^/logged-models/([^/]+)(?:/.*)?$")


async def run_scope_target(
    path: str, body: Mapping[str, Any], tracking: TrackingStore
) -> str | None:
    """Return the run an MLflow write changes, for :func:`check_run_scope`.

    Parameters
    ----------
    path
        The request's path (``/api/2.0/mlflow/runs/log-batch``,
        ``/api/2.0/mlflow/logged-models/<id>/tags``,
        ``/api/2.0/mlflow-artifacts/artifacts/<exp>/<run>/artifacts/x``).
    body
        The request's fields (JSON body, or query for bodiless calls).
    tracking
        The tracking store, to find a logged model's source run.

    Returns
    -------
    str or None
        The run id, or None for a write that changes no single run (experiments, new runs,
        deletions and restores, the registry), which a run-scoped token may not make.
    """
    if path.startswith(_ARTIFACTS_PREFIX):
        parts = path[len(_ARTIFACTS_PREFIX) :].split("/")
        if len(parts) >= 3 and parts[2] == "artifacts" and _RUN_ID.match(parts[1]):
            return parts[1]  # <experiment>/<run>/artifacts/...
        if len(parts) >= 4 and parts[1] == "models" and parts[3] == "artifacts":
            found = await tracking.get_logged_model(parts[2])  # <experiment>/models/<id>/...
            return (found.source_run_id or None) if found is not None else None
        return None
    rest = next((path[len(p) :] for p in _API_PREFIXES if path.startswith(p + "/")), None)
    if rest is None:
        return None
    if rest in _RUN_WRITES:
        run_id = body.get("run_id") or body.get("run_uuid")
        return run_id if isinstance(run_id, str) else None
    if rest == "/logged-models":
        run_id = body.get("source_run_id")
        return run_id if isinstance(run_id, str) and run_id else None
    match = _LOGGED_MODEL.match(rest)
    if match is not None and match.group(1) != "search":
        found = await tracking.get_logged_model(match.group(1))
        return (found.source_run_id or None) if found is not None else None
    return None


def _json_tag(value: Any) -> str | None:
    text = json.dumps(value, separators=(",", ":"), sort_keys=True)
    return text if len(text) <= _TAG_LIMIT else None


def _cut(text: str) -> str:
    return text if len(text) <= _TAG_LIMIT else text[: _TAG_LIMIT - 3] + "..."


def job_tags(spec: Mapping[str, Any], user: str, name: str = "") -> dict[str, str]:
    """Return the tags that let ``--from-run`` submit a job again (command, resources, spec).

    Values too long for a tag (8,000 characters) are left out and named in
    ``cplat.job_tags_truncated``; env values are never recorded, only the names.
    """
    command = spec.get("command")
    tags = {
        "mlflow.user": user,
        "mlflow.source.type": "JOB",
        "mlflow.source.name": _cut(
            command if isinstance(command, str) else shlex.join(map(str, command or []))
        ),
    }
    if name:
        tags["cplat.job_name"] = name
    # Everything else the spec holds (priority, gang, max_runtime, checkpoint, workdir,
    # on_failure, max_restarts, exclusive, ...), so that fields added later are kept too.
    rest = {k: v for k, v in spec.items() if k not in ("command", "tasks", "env", SPEC_KEY)}
    rest["env_names"] = sorted(spec.get("env") or {})
    dropped = []
    for key, value in (
        ("cplat.command", command),
        ("cplat.resources", spec.get("tasks")),
        ("cplat.job_spec", rest),
    ):
        text = _json_tag(value)
        if text is None:
            dropped.append(key)
        else:
            tags[key] = text
    if dropped:
        tags["cplat.job_tags_truncated"] = ",".join(dropped)
    return tags


def _artifact_path(artifact_uri: str, name: str) -> str | None:
    """Return the storage path of a run artifact (None: the run keeps its files elsewhere)."""
    scheme = "mlflow-artifacts:"
    if not artifact_uri.startswith(scheme):
        return None
    return f"{artifact_uri[len(scheme) :].strip('/')}/{name}"


class JobRunLinker:
    """Creates the runs of jobs submitted with an experiment and keeps them in step.

    Parameters
    ----------
    tracking
        The tracking store.
    jobs
        The service's store (jobs and nodes), read for a job's attempt, placement and exit.
    artifacts
        Artifact storage for ``snapshot.json`` (None: the snapshot is kept as tags only).
    settle_wait
        Longest wait for the store to show a change an event announced (seconds).

    Notes
    -----
    Entry points: :meth:`on_submit` (before the job is stored), :meth:`on_created` (after),
    :meth:`discard` (the submission created no job), :meth:`recover` (on start, with the
    unfinished jobs), :meth:`notify` (every job event, from the controller's thread) and
    :meth:`run` (the background task that applies them), or :meth:`on_job_event` directly.
    """

    def __init__(
        self,
        tracking: TrackingStore,
        jobs: JobSource,
        artifacts: ArtifactStore | None = None,
        settle_wait: float = _SETTLE_WAIT,
    ) -> None:
        self.tracking = tracking
        self.jobs = jobs
        self.artifacts = artifacts
        self.settle_wait = settle_wait
        #: job id -> run id of the unfinished linked jobs: events of others cost one lookup.
        self.links: dict[int, str] = {}
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    # --- submission ---------------------------------------------------------------------------

    async def on_submit(
        self,
        project: str,
        user: str,
        spec: Mapping[str, Any],
        experiment: Any,
        job_name: str = "",
    ) -> RunLink:
        """Create the run of a job about to be stored.

        Parameters
        ----------
        project, user
            The job's project and submitter.
        spec
            The job's spec as it will be stored (command, tasks, env, ...).
        experiment
            The submission's ``experiment`` field (see :func:`parse_experiment`).
        job_name
            The job's name.

        Returns
        -------
        RunLink
            Keep :meth:`RunLink.spec_entry` in the job's spec under :data:`SPEC_KEY`.

        Raises
        ------
        InputError
            For a bad ``experiment`` field (naming it), a deleted experiment, or a
            ``from_run`` that is not a run of ``project``.
        """
        req = parse_experiment(experiment)
        exp = await self.tracking.get_experiment_by_name(project, req.name)
        if exp is None:
            try:
                await self.tracking.create_experiment(project, req.name)
            except TrackingError as exc:
                if exc.code != "RESOURCE_ALREADY_EXISTS":  # else: a concurrent first use
                    raise InputError(exc.message, field="experiment.name") from None
            exp = await self.tracking.get_experiment_by_name(project, req.name)
        if exp is None or exp.lifecycle_stage != "active":
            raise InputError(
                f"experiment {req.name!r} is deleted; restore it or choose another name",
                field="experiment.name",
            )
        tags = job_tags(spec, user, job_name)
        if req.from_run:
            owner = await self.tracking.run_owner(req.from_run)
            if owner is None or owner.project != project:
                raise InputError(
                    f"no run {req.from_run} in project {project!r}", field="experiment.from_run"
                )
            tags["cplat.from_run"] = req.from_run
        if req.snapshot is not None:
            tags.update(snapshot_tags(req.snapshot))
        run = await self.tracking.create_run(exp.experiment_id, user, req.run_name, tags=tags)
        try:
            # The store creates runs RUNNING; this one waits with its job.
            await self.tracking.update_run(run.run_id, status="SCHEDULED")
            if req.snapshot is not None:
                await self._write_snapshot(run.artifact_uri, req.snapshot, tags)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.tracking.set_run_lifecycle(run.run_id, "deleted")
            raise
        return RunLink(exp.name, exp.experiment_id, run.run_id)

    async def _write_snapshot(
        self, artifact_uri: str, snap: Mapping[str, Any], tags: dict[str, str]
    ) -> None:
        path = _artifact_path(artifact_uri, SNAPSHOT_ARTIFACT)
        if self.artifacts is None or path is None:
            return
        data = json.dumps(snap, indent=1, sort_keys=True).encode("utf-8")
        await self.artifacts.put(path, [data])

    async def on_created(self, rec: JobRecord) -> None:
        """Record the stored job's id on its run and start following its events."""
        run_id = run_claim(rec.spec)
        if not run_id:
            return
        self.links[rec.id] = run_id
        await self._tag(rec.id, run_id, {"cplat.job_id": str(rec.id)})

    async def discard(self, link: RunLink) -> None:
        """Delete the run of a submission that created no job (refused, or a replay)."""
        with contextlib.suppress(TrackingError):
            await self.tracking.set_run_lifecycle(link.run_id, "deleted")

    async def recover(self, jobs: Iterable[JobRecord]) -> None:
        """Follow the unfinished jobs again after a restart, and bring their runs in step."""
        for rec in jobs:
            run_id = run_claim(rec.spec)
            if not run_id:
                continue
            self.links[rec.id] = run_id
            status = STATUS_OF_JOB.get(rec.state)
            if status is not None:
                await self._update(rec.id, run_id, status=status)

    # --- events -------------------------------------------------------------------------------

    def notify(self, event: Mapping[str, Any]) -> None:
        """Take one job event (``{"id", "project", "state", "reason", "at"}``) without waiting.

        Events of jobs without a run are dropped here; the others wait for :meth:`run`.
        """
        job_id = event.get("id")
        if isinstance(job_id, int) and job_id in self.links:
            self._queue.put_nowait(dict(event))

    async def run(self) -> None:
        """Apply the events :meth:`notify` took, in order, until cancelled."""
        while True:
            event = await self._queue.get()
            try:
                await self.on_job_event(event)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one bad event must not stop the others
                log.exception("could not bring the run of job %s in step", event.get("id"))

    async def on_job_event(self, event: Mapping[str, Any]) -> None:
        """Bring a job's run in step with one of its state changes."""
        job_id, state = event.get("id"), event.get("state")
        if not isinstance(job_id, int) or not isinstance(state, str):
            return
        run_id = self.links.get(job_id)
        if run_id is None:
            return
        at = event.get("at")
        at = float(at) if isinstance(at, (int, float)) else time.time()
        reason = str(event.get("reason") or "")
        if state == "RUNNING":
            rec = await self._settled(job_id, lambda r: r.attempt >= 1 and bool(r.placement))
            tags = {} if rec is None else await self._attempt_tags(rec, at)
            await self._update(job_id, run_id, "RUNNING", tags=tags)
        elif state == "PREEMPTED":
            run = await self.tracking.get_run(run_id)
            count = 0
            if run is not None:
                with contextlib.suppress(ValueError):
                    count = int(run.tags.get("cplat.requeues", "0"))
            tags = {"cplat.requeues": str(count + 1), "cplat.requeue_reason": _cut(reason)}
            await self._update(job_id, run_id, "SCHEDULED", tags=tags)
        elif state in _FINAL:
            rec = await self._settled(job_id, lambda r: r.state in _FINAL)
            tags = {"cplat.job_state": state, "cplat.job_reason": _cut(reason)}
            if rec is not None and rec.exit_code is not None:
                tags["cplat.exit_code"] = str(rec.exit_code)
            await self._update(job_id, run_id, STATUS_OF_JOB[state], int(at * 1000), tags)
            self.links.pop(job_id, None)

    async def _settled(self, job_id: int, ready: Callable[[JobRecord], bool]) -> JobRecord | None:
        """Read a job once the store shows what an event announced (or the wait ran out)."""
        deadline = time.monotonic() + self.settle_wait
        rec = await self.jobs.get_job(job_id)
        while rec is not None and not ready(rec) and time.monotonic() < deadline:
            await asyncio.sleep(_SETTLE_POLL)
            rec = await self.jobs.get_job(job_id)
        return rec

    async def _attempt_tags(self, rec: JobRecord, at: float) -> dict[str, str]:
        nodes = sorted({str(p.get("node")) for p in rec.placement if p.get("node")})
        models: set[str] = set()
        gpus = 0
        specs: dict[str, dict[int, str]] = {}
        for name in nodes:
            node = await self.jobs.get_node(name)
            listed = node.spec.get("gpus", []) if node is not None else []
            specs[name] = {
                int(g["index"]): str(g.get("model") or "")
                for g in listed
                if isinstance(g, Mapping) and isinstance(g.get("index"), int)
            }
        for p in rec.placement:
            for index in p.get("gpus") or []:
                gpus += 1
                model = specs.get(str(p.get("node")), {}).get(int(index), "")
                if model:
                    models.add(model)
        tags = {
            "cplat.attempt": str(rec.attempt),
            "cplat.nodes": _cut(",".join(nodes)),
            "cplat.gpus": str(gpus),
        }
        if models:
            tags["cplat.gpu_models"] = _cut(",".join(sorted(models)))
        if rec.attempt <= 1:
            tags["cplat.queue_wait_s"] = f"{max(0.0, at - rec.submitted_at):.3f}"
        return tags

    async def _tag(self, job_id: int, run_id: str, tags: Mapping[str, str]) -> None:
        await self._guard(job_id, run_id, self.tracking.log_batch(run_id, tags=list(tags.items())))

    async def _update(
        self,
        job_id: int,
        run_id: str,
        status: str,
        end_time: int | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        if tags:
            await self._tag(job_id, run_id, tags)
        await self._guard(
            job_id, run_id, self.tracking.update_run(run_id, status=status, end_time=end_time)
        )

    async def _guard(self, job_id: int, run_id: str, write: Awaitable[Any]) -> None:
        """Run a write; a run deleted (or gone) under the job stops being followed."""
        try:
            await write
        except TrackingError as exc:
            log.info("job %d: its run %s no longer takes writes (%s)", job_id, run_id, exc)
            self.links.pop(job_id, None)
