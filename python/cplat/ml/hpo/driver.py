"""The study driver: Optuna proposes, cplat's jobs run, the tracking store reports back.

Each :meth:`StudyDriver.step`:

1. looks at every RUNNING trial: the intermediate values its run logged since the last look
   (the study's metric, with steps, through the tracking store's metric history) are reported
   to Optuna and the pruner asked; a pruned trial's job is cancelled (the agent stops it with
   SIGTERM and, after the grace, SIGKILL) and the trial told PRUNED. A job that SUCCEEDED is
   told COMPLETE with the metric's last value; one that FAILED or was CANCELLED, FAIL. A
   preempted or requeued job stays the same trial: its next attempt has the same parameters
   and reports on (steps it reports again are not reported twice);
2. asks Optuna for new trials while fewer than ``parallel`` run and the budget is not spent,
   and submits a job for each (see :meth:`StudyDriver.job_body`).

All state lives in the journal (:mod:`cplat.ml.hpo.study`), the job store and the tracking store,
none in the driver: a driver made anew after a crash picks up where the old one was. A trial
is asked and recorded in the journal before its run and job exist; a crash in between leaves a
RUNNING trial without a job, which the next step submits, under an idempotency key of the
trial, so a job the crash hid is found rather than duplicated.
"""

from __future__ import annotations

import json
import logging
import math
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from cplat.ml.hpo.space import format_value
from cplat.ml.hpo.study import (
    ATTEMPT_ATTR,
    JOB_ATTR,
    PARENT_ATTR,
    REASON_ATTR,
    RUN_ATTR,
    STATE_ATTR,
    StudyConfig,
    load_study,
    study_state,
)
from cplat.ml.tracking import MetricIn, TrackingError, TrackingStore
from cplat.ml.tracking.jobs import SPEC_KEY

__all__ = ["JobBackend", "JobStatus", "StudyDriver", "TRIAL_PARAMS_ENV"]

log = logging.getLogger("cplat.hpo")

#: The environment variable with a trial's parameters as a JSON object.
TRIAL_PARAMS_ENV = "CPLAT_TRIAL_PARAMS"
#: Tags of the runs: the study of a parent run, the study and trial of a trial's run.
STUDY_TAG, TRIAL_TAG, PARENT_TAG = "cplat.ml.hpo.study", "cplat.hpo.trial", "mlflow.parentRunId"
#: Key of a trial's job body that names its run (a job's spec keeps it under the same key).
TRACKING_KEY = SPEC_KEY
_DONE_JOB = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})


@dataclass(frozen=True)
class JobStatus:
    """What the driver needs of a job: its state and attempt."""

    state: str
    attempt: int = 0
    reason: str = ""


class JobBackend(Protocol):
    """How a driver runs trials: the service's store and controller, or a test's fake."""

    async def submit(self, cfg: StudyConfig, name: str, body: dict[str, Any], key: str) -> int:
        """Create and queue a job for ``cfg``'s creator; return its id.

        ``key`` is the trial's idempotency key: a second submit with it returns the job the
        first created.
        """

    async def status(self, job_id: int) -> JobStatus | None:
        """Return a job's state (None when there is no such job)."""

    async def cancel(self, job_id: int) -> None:
        """Stop a job (SIGTERM, then SIGKILL after the grace); a finished job is left alone."""


class StudyDriver:
    """Runs one study's trials as jobs (see the module's description).

    Parameters
    ----------
    storage
        The studies' Optuna storage (:func:`cplat.ml.hpo.study.open_storage`).
    key
        The Optuna study name (``<project>/<name>``).
    jobs
        Where trials run.
    tracking
        The tracking store: runs of the study and its trials, and the metric they log.
    server_url
        The URL tasks reach the service at (their ``MLFLOW_TRACKING_URI``), or a function
        returning it (a server bound to port 0 learns its URL only once it listens).
    """

    def __init__(
        self,
        storage: Any,
        key: str,
        jobs: JobBackend,
        tracking: TrackingStore,
        server_url: str | Callable[[], str] = "",
    ) -> None:
        self.storage = storage
        self.key = key
        self.jobs = jobs
        self.tracking = tracking
        self._server_url = server_url
        self.study, self.cfg = load_study(storage, key)
        self.experiment_id = ""

    @property
    def server_url(self) -> str:
        """The URL tasks reach the service at (empty: unknown)."""
        url = self._server_url() if callable(self._server_url) else self._server_url
        return url.rstrip("/")

    @property
    def state(self) -> str:
        """The study's state (re-read from the journal)."""
        return study_state(self._reload())

    def _reload(self) -> Any:
        import optuna

        # User attributes change from outside the driver (a stop); read them fresh.
        return optuna.load_study(study_name=self.key, storage=self.storage)

    # The tracking side ------------------------------------------------------------------
    async def _experiment(self) -> str:
        if not self.experiment_id:
            exp = await self.tracking.get_experiment_by_name(self.cfg.project, self.cfg.experiment)
            if exp is None:
                try:
                    self.experiment_id = await self.tracking.create_experiment(
                        self.cfg.project, self.cfg.experiment
                    )
                except TrackingError:
                    # Created in between by someone else: use theirs.
                    exp = await self.tracking.get_experiment_by_name(
                        self.cfg.project, self.cfg.experiment
                    )
                    if exp is None:
                        raise
                    self.experiment_id = exp.experiment_id
            else:
                self.experiment_id = exp.experiment_id
        return self.experiment_id

    async def parent_run(self) -> str:
        """Return the study's parent run, creating it on the first call."""
        run_id = self.study.user_attrs.get(PARENT_ATTR)
        if run_id:
            return str(run_id)
        eid = await self._experiment()
        found = await self._find_run(eid, STUDY_TAG, self.key, parent=True)
        if found is None:
            run = await self.tracking.create_run(
                eid, self.cfg.user, run_name=self.cfg.name, tags={STUDY_TAG: self.key}
            )
            await self.tracking.log_batch(
                run.run_id,
                params=[
                    ("sampler", self.cfg.sampler),
                    ("pruner", self.cfg.pruner),
                    ("metric", self.cfg.metric),
                    ("direction", self.cfg.direction),
                    ("n_trials", str(self.cfg.n_trials)),
                    ("parallel", str(self.cfg.parallel)),
                ],
            )
            found = run.run_id
        self.study.set_user_attr(PARENT_ATTR, found)
        return found

    async def _find_run(self, eid: str, tag: str, value: str, parent: bool = False) -> str | None:
        """Return the run tagged ``tag = value`` (one a crash left unrecorded), if any."""
        quoted = value.replace("'", "''")
        runs, _ = await self.tracking.search_runs(
            [eid], [self.cfg.project], f"tags.`{tag}` = '{quoted}'", max_results=10
        )
        for r in runs:
            if parent == (TRIAL_TAG not in r.tags):
                return r.run_id
        return None

    async def _trial_run(self, trial: Any) -> str:
        run_id = trial.user_attrs.get(RUN_ATTR)
        if run_id:
            return str(run_id)
        parent = await self.parent_run()
        eid = await self._experiment()
        tkey = f"{self.key}#{trial.number}"
        found = await self._find_run(eid, TRIAL_TAG, tkey)
        if found is None:
            run = await self.tracking.create_run(
                eid,
                self.cfg.user,
                run_name=f"{self.cfg.name}-trial-{trial.number}",
                tags={PARENT_TAG: parent, TRIAL_TAG: tkey, STUDY_TAG: self.key},
            )
            await self.tracking.log_batch(
                run.run_id, params=[(k, format_value(v)) for k, v in trial.params.items()]
            )
            found = run.run_id
        self.storage.set_trial_user_attr(trial._trial_id, RUN_ATTR, found)
        return found

    async def _end_run(self, run_id: str | None, status: str, state: str) -> None:
        if not run_id:
            return
        try:
            await self.tracking.log_batch(run_id, tags=[("cplat.hpo.state", state)])
            await self.tracking.update_run(run_id, status=status, end_time=_now_ms())
        except TrackingError as exc:
            # A run deleted by its owner must not stop the study.
            log.warning("study %s: run %s not updated: %s", self.key, run_id, exc)

    # Jobs ----------------------------------------------------------------------------------
    def job_body(self, trial: Any, run_id: str, experiment_id: str) -> dict[str, Any]:
        """Return the job of a trial: the study's template with the trial's parameters.

        The parameters reach the command as ``CPLAT_TRIAL_PARAMS`` (JSON) and, when the space
        says ``append_args``, as ``--name value`` arguments; the run as ``MLFLOW_RUN_ID`` with
        ``MLFLOW_TRACKING_URI`` and ``MLFLOW_EXPERIMENT_ID`` (the task's ``CPLAT_TOKEN`` opens
        the MLflow API of the service).
        """
        body: dict[str, Any] = json.loads(json.dumps(dict(self.cfg.job)))  # a deep copy
        params = dict(trial.params)
        if self.cfg.space.append_args:
            extra = self.cfg.space.args(params)
            command = body.get("command", [])
            if isinstance(command, str):
                body["command"] = " ".join([command, *(shlex.quote(a) for a in extra)])
            else:
                body["command"] = [*command, *extra]
        env = dict(body.get("env") or {})
        env.update(
            {
                TRIAL_PARAMS_ENV: json.dumps(params, sort_keys=True),
                "CPLAT_STUDY": self.cfg.name,
                "CPLAT_TRIAL": str(trial.number),
                "CPLAT_HPO_METRIC": self.cfg.metric,
                "MLFLOW_RUN_ID": run_id,
                "MLFLOW_EXPERIMENT_ID": experiment_id,
            }
        )
        if self.server_url:
            env["MLFLOW_TRACKING_URI"] = self.server_url
        body["env"] = env
        # The job's run, as a job submitted with an experiment has it: the service keeps it in
        # the job's spec, so the task's token is scoped to this run and the agent sets
        # MLFLOW_TRACKING_TOKEN (the unmodified MLflow client in the trial can log).
        body[TRACKING_KEY] = {
            "experiment": self.cfg.experiment,
            "experiment_id": experiment_id,
            "run_id": run_id,
        }
        return body

    async def _submit(self, trial: Any) -> int:
        run_id = await self._trial_run(trial)
        body = self.job_body(trial, run_id, await self._experiment())
        name = f"{self.cfg.name}-t{trial.number}"
        key = f"hpo:{self.key}:{self.study._study_id}:{trial.number}"
        job_id = await self.jobs.submit(self.cfg, name, body, key)
        self.storage.set_trial_user_attr(trial._trial_id, JOB_ATTR, job_id)
        return job_id

    async def _launch(self) -> None:
        trial = self.study.ask(self.cfg.space.distributions())
        frozen = self.study._storage.get_trial(trial._trial_id)
        await self._submit(frozen)

    # One pass --------------------------------------------------------------------------------
    async def step(self) -> bool:
        """Advance the study once; return whether it has ended (finished or stopped)."""
        self.study = self._reload_with_sampler()
        state = study_state(self.study)
        if state in ("stopped", "finished"):
            return True
        await self.parent_run()
        running = [t for t in self.study.get_trials(deepcopy=False) if t.state.name == "RUNNING"]
        if state == "stopping":
            for t in running:
                await self._stop_trial(t, "the study was stopped")
            await self._end_run(self.study.user_attrs.get(PARENT_ATTR), "KILLED", "stopped")
            self.study.set_user_attr(STATE_ATTR, "stopped")
            return True
        live = 0
        for t in running:
            if not await self._watch(t):
                live += 1
        total = len(self.study.get_trials(deepcopy=False))
        while live < self.cfg.parallel and total < self.cfg.n_trials:
            await self._launch()
            live += 1
            total += 1
        if live == 0 and total >= self.cfg.n_trials:
            await self._end_run(self.study.user_attrs.get(PARENT_ATTR), "FINISHED", "finished")
            await self._log_best()
            self.study.set_user_attr(STATE_ATTR, "finished")
            return True
        return False

    def _reload_with_sampler(self) -> Any:
        study = self._reload()
        # Keep the sampler and pruner across reloads: TPE and GP keep no state worth keeping
        # between asks, but CMA-ES and the grid read theirs from the storage anyway.
        study.sampler = self.study.sampler
        study.pruner = self.study.pruner
        return study

    async def _log_best(self) -> None:
        parent = self.study.user_attrs.get(PARENT_ATTR)
        complete = [t for t in self.study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
        if not parent or not complete:
            return
        pick = min if self.cfg.direction == "minimize" else max
        best = pick(complete, key=lambda t: t.value)
        try:
            await self.tracking.log_batch(
                str(parent),
                metrics=[MetricIn(f"best_{self.cfg.metric}", float(best.value), _now_ms(), 0)],
                tags=[
                    ("cplat.hpo.best_trial", str(best.number)),
                    ("cplat.hpo.best_run", str(best.user_attrs.get(RUN_ATTR, ""))),
                ],
            )
        except TrackingError as exc:
            log.warning("study %s: best not logged: %s", self.key, exc)

    async def _stop_trial(self, trial: Any, reason: str) -> None:
        import optuna

        job_id = trial.user_attrs.get(JOB_ATTR)
        if job_id is not None:
            await self.jobs.cancel(int(job_id))
        await self._end_run(trial.user_attrs.get(RUN_ATTR), "KILLED", "FAIL")
        self.storage.set_trial_user_attr(trial._trial_id, REASON_ATTR, reason)
        self.study.tell(trial.number, state=optuna.trial.TrialState.FAIL)

    async def _watch(self, trial: Any) -> bool:
        """Advance one RUNNING trial; return whether it has ended."""
        import optuna

        job_id = trial.user_attrs.get(JOB_ATTR)
        if job_id is None:
            job_id = await self._submit(trial)
        status = await self.jobs.status(int(job_id))
        if status is None:
            self.storage.set_trial_user_attr(trial._trial_id, REASON_ATTR, "its job is gone")
            self.study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            return True
        if status.attempt != trial.user_attrs.get(ATTEMPT_ATTR):
            self.storage.set_trial_user_attr(trial._trial_id, ATTEMPT_ATTR, status.attempt)
        run_id = trial.user_attrs.get(RUN_ATTR)
        points = await self._history(run_id)
        done = trial.intermediate_values
        last = max(done) if done else None
        fresh = [(s, v) for s, v in points if (last is None or s > last) and math.isfinite(v)]
        handle = optuna.trial.Trial(self.study, trial._trial_id)
        for s, v in fresh:
            handle.report(v, s)
        if status.state not in _DONE_JOB and fresh and handle.should_prune():
            await self.jobs.cancel(int(job_id))
            await self._end_run(run_id, "KILLED", "PRUNED")
            self.storage.set_trial_user_attr(
                trial._trial_id, REASON_ATTR, f"pruned at step {fresh[-1][0]}"
            )
            self.study.tell(trial.number, state=optuna.trial.TrialState.PRUNED)
            return True
        if status.state == "SUCCEEDED":
            final = points[-1][1] if points else math.nan
            if not math.isfinite(final):
                reason = (
                    f"the job succeeded without logging {self.cfg.metric}"
                    if not points
                    else f"the last {self.cfg.metric} is not a finite number"
                )
                await self._end_run(run_id, "FAILED", "FAIL")
                self.storage.set_trial_user_attr(trial._trial_id, REASON_ATTR, reason)
                self.study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
                return True
            await self._end_run(run_id, "FINISHED", "COMPLETE")
            self.study.tell(trial.number, final)
            return True
        if status.state in ("FAILED", "CANCELLED"):
            await self._end_run(run_id, "FAILED" if status.state == "FAILED" else "KILLED", "FAIL")
            why = f"its job {job_id} {status.state.lower()}"
            if status.reason:
                why += f": {status.reason}"
            self.storage.set_trial_user_attr(trial._trial_id, REASON_ATTR, why)
            self.study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            return True
        return False

    async def _history(self, run_id: str | None) -> list[tuple[int, float]]:
        """Return the metric's ``(step, value)`` by step, the latest value of each step."""
        if not run_id:
            return []
        try:
            rows, _ = await self.tracking.metric_history(str(run_id), self.cfg.metric)
        except TrackingError:
            return []
        by_step: dict[int, float] = {}
        for step, _ts, value in rows:  # ordered by step, then time: the last one wins
            by_step[int(step)] = float(value)
        return sorted(by_step.items())


def _now_ms() -> int:
    return int(time.time() * 1000)
