"""A study's definition and its durable home: an Optuna journal file.

Every study of a service lives in one :class:`optuna.storages.JournalStorage` whose file
(``<data_dir>/hpo/studies.journal``) Optuna appends to and fsyncs on every change, so a server
killed with ``kill -9`` loses no told trial: a restart replays the journal. Optuna study names
are ``<project>/<name>``, so two projects may each have a study of one name. cplat keeps its
own part of a study in the study's user attributes:

- ``cplat.config``: the :class:`StudyConfig` (what ``POST /v1/studies`` accepted);
- ``cplat.state``: ``running``, ``stopping`` (a stop was asked), ``stopped`` or ``finished``;
- ``cplat.parent_run``: the study's parent run in the tracking store;

and in each trial's user attributes its job (``cplat.job_id``), run (``cplat.run_id``), the
job's attempt and, for failures, why (``cplat.reason``).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cplat.errors import InputError
from cplat.ml.hpo.samplers import PRUNERS, SAMPLERS, make_pruner, make_sampler
from cplat.ml.hpo.space import Space, parse_space

__all__ = [
    "DIRECTIONS",
    "JOURNAL",
    "STATES",
    "StudyConfig",
    "create_study",
    "load_study",
    "open_storage",
    "optuna_name",
    "study_state",
    "study_summary",
    "trial_json",
]

#: The journal file under the service's data dir.
JOURNAL = Path("hpo") / "studies.journal"
DIRECTIONS = ("minimize", "maximize")
STATES = ("running", "stopping", "stopped", "finished")
CONFIG_ATTR, STATE_ATTR, PARENT_ATTR = "cplat.config", "cplat.state", "cplat.parent_run"
JOB_ATTR, RUN_ATTR, ATTEMPT_ATTR, REASON_ATTR = (
    "cplat.job_id",
    "cplat.run_id",
    "cplat.attempt",
    "cplat.reason",
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_METRIC = re.compile(r"^[A-Za-z0-9_.\-/ ]{1,250}$")
MAX_TRIALS, MAX_PARALLEL = 10_000, 256


@dataclass(frozen=True)
class StudyConfig:
    """What a study searches, how, and how its trials run.

    Attributes
    ----------
    name, project, user
        The study and who created it, in which project (trials are the creator's jobs).
    space
        The search space.
    metric, direction
        The metric trials log (with steps) and whether lower or higher is better.
    sampler, pruner
        Names from :data:`~cplat.ml.hpo.samplers.SAMPLERS` and
        :data:`~cplat.ml.hpo.samplers.PRUNERS`.
    n_trials, parallel
        The budget, and how many trials run at once.
    job
        The template of each trial's job: a ``POST /v1/jobs`` body without ``name``.
    experiment
        The tracking experiment of the parent and trial runs.
    seed
        Seed of the sampler (None: fresh randomness).
    token_id, token_expires_at
        The creator's token: trial jobs get tokens derived from it, revoked with it and never
        outliving it (as for any job the creator submits).
    created_at
        When the study was created (seconds since the epoch).
    """

    name: str
    project: str
    user: str
    space: Space
    metric: str
    direction: str = "minimize"
    sampler: str = "tpe"
    pruner: str = "median"
    n_trials: int = 16
    parallel: int = 1
    job: Mapping[str, Any] = field(default_factory=dict)
    experiment: str = ""
    seed: int | None = None
    token_id: str = ""
    token_expires_at: float | None = None
    created_at: float = 0.0

    @property
    def key(self) -> str:
        """The Optuna study name: ``<project>/<name>``."""
        return optuna_name(self.project, self.name)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form kept in the journal."""
        return {
            "name": self.name,
            "project": self.project,
            "user": self.user,
            "space": self.space.to_dict(),
            "metric": self.metric,
            "direction": self.direction,
            "sampler": self.sampler,
            "pruner": self.pruner,
            "n_trials": self.n_trials,
            "parallel": self.parallel,
            "job": dict(self.job),
            "experiment": self.experiment,
            "seed": self.seed,
            "token_id": self.token_id,
            "token_expires_at": self.token_expires_at,
            "created_at": self.created_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudyConfig:
        """Read the form :meth:`to_dict` wrote."""
        return cls(
            name=data["name"],
            project=data["project"],
            user=data["user"],
            space=parse_space(data["space"]),
            metric=data["metric"],
            direction=data["direction"],
            sampler=data["sampler"],
            pruner=data["pruner"],
            n_trials=int(data["n_trials"]),
            parallel=int(data["parallel"]),
            job=dict(data["job"]),
            experiment=data.get("experiment") or data["name"],
            seed=data.get("seed"),
            token_id=data.get("token_id", ""),
            token_expires_at=data.get("token_expires_at"),
            created_at=float(data.get("created_at", 0.0)),
        )

    @classmethod
    def from_body(
        cls,
        body: Mapping[str, Any],
        project: str,
        user: str,
        token_id: str = "",
        token_expires_at: float | None = None,
    ) -> StudyConfig:
        """Check a ``POST /v1/studies`` body (the job template is checked by the caller).

        Raises
        ------
        InputError
            Naming the field (``space.params.lr.low``, ``sampler``, ``parallel``, ...).
        """
        name = body.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise InputError(
                "a study name is a letter or digit then letters, digits, . _ - (at most 63)",
                field="name",
            )
        space = parse_space(body.get("space"), prefix="space.")
        metric = body.get("metric")
        if not isinstance(metric, str) or not _METRIC.match(metric):
            raise InputError(
                "expected the metric's name as the trials log it (like val_loss)",
                field="metric",
            )
        direction = body.get("direction", "minimize")
        if direction not in DIRECTIONS:
            raise InputError(f"expected one of {', '.join(DIRECTIONS)}", field="direction")
        sampler = body.get("sampler", "tpe")
        pruner = body.get("pruner", "median")
        if sampler not in SAMPLERS:
            raise InputError(f"expected one of {', '.join(SAMPLERS)}", field="sampler")
        if pruner not in PRUNERS:
            raise InputError(f"expected one of {', '.join(PRUNERS)}", field="pruner")
        n_trials = _count(body.get("n_trials", 16), "n_trials", MAX_TRIALS)
        parallel = _count(body.get("parallel", 1), "parallel", MAX_PARALLEL)
        seed = body.get("seed")
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32
        ):
            raise InputError("expected an integer from 0 to 2**32 - 1", field="seed")
        experiment = body.get("experiment") or name
        if not isinstance(experiment, str) or not 1 <= len(experiment) <= 250:
            raise InputError(
                "expected an experiment name of 1 to 250 characters", field="experiment"
            )
        # Built now so a sampler the server cannot run, or a space it cannot search (a grid
        # over a continuous range), is refused at creation rather than at the first trial.
        make_sampler(sampler, space)
        make_pruner(pruner)
        if sampler == "grid":
            n_trials = min(n_trials, math.prod(p.grid_size() for p in space.params))
        return cls(
            name=name,
            project=project,
            user=user,
            space=space,
            metric=metric,
            direction=direction,
            sampler=sampler,
            pruner=pruner,
            n_trials=n_trials,
            parallel=parallel,
            job=dict(body.get("job") or {}),
            experiment=experiment,
            seed=seed,
            token_id=token_id,
            token_expires_at=token_expires_at,
            created_at=time.time(),
        )


def _count(value: Any, name: str, most: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise InputError(f"expected an integer from 1 to {most}", field=name)
    return value


def optuna_name(project: str, name: str) -> str:
    """Return the Optuna study name of a project's study."""
    return f"{project}/{name}"


def open_storage(data_dir: Path) -> Any:
    """Open (creating) the journal of the studies under a service's data dir."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = data_dir / JOURNAL
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        path.touch(mode=0o600)
    return JournalStorage(JournalFileBackend(str(path)))


def _quiet_optuna() -> None:
    import optuna

    # Optuna logs every told trial at INFO; the server's own log says what matters.
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def create_study(storage: Any, cfg: StudyConfig) -> Any:
    """Create the Optuna study of ``cfg`` in ``storage``, state ``running``.

    Raises
    ------
    InputError
        ``field="name"`` when the project has a study of that name already.
    """
    import optuna

    _quiet_optuna()
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=cfg.key,
            direction=optuna.study.StudyDirection[cfg.direction.upper()],
            sampler=make_sampler(cfg.sampler, cfg.space, cfg.seed),
            pruner=make_pruner(cfg.pruner),
        )
    except optuna.exceptions.DuplicatedStudyError:
        raise InputError(f"study {cfg.name!r} exists already", field="name") from None
    study.set_user_attr(CONFIG_ATTR, cfg.to_dict())
    study.set_user_attr(STATE_ATTR, "running")
    return study


def load_study(storage: Any, key: str) -> tuple[Any, StudyConfig]:
    """Load a study with its sampler and pruner rebuilt from its config.

    A seeded sampler is seeded anew with the seed plus the trials so far: a restarted driver
    must not draw again the points it drew before the restart.

    Raises
    ------
    KeyError
        When there is no such study.
    """
    import optuna

    _quiet_optuna()
    try:
        study = optuna.load_study(study_name=key, storage=storage)
    except KeyError:
        raise KeyError(key) from None
    cfg = StudyConfig.from_dict(study.user_attrs[CONFIG_ATTR])
    seed = None if cfg.seed is None else (cfg.seed + len(study.trials)) % 2**32
    study.sampler = make_sampler(cfg.sampler, cfg.space, seed)
    study.pruner = make_pruner(cfg.pruner)
    return study, cfg


def study_state(study: Any) -> str:
    """Return cplat's state of a study (``running``, ``stopping``, ``stopped``, ``finished``)."""
    return str(study.user_attrs.get(STATE_ATTR, "running"))


def trial_json(t: Any) -> dict[str, Any]:
    """Return the API's view of an Optuna trial."""
    steps = t.intermediate_values
    last = max(steps) if steps else None
    value = t.value if t.state.name == "COMPLETE" else None
    return {
        "number": t.number,
        "state": t.state.name,
        "params": dict(t.params),
        "value": value,
        "last_step": last,
        "last_value": steps[last] if last is not None else None,
        "intermediate": {str(k): v for k, v in sorted(steps.items())},
        "job_id": t.user_attrs.get(JOB_ATTR),
        "run_id": t.user_attrs.get(RUN_ATTR),
        "attempt": t.user_attrs.get(ATTEMPT_ATTR),
        "reason": t.user_attrs.get(REASON_ATTR),
        "started_at": t.datetime_start.timestamp() if t.datetime_start else None,
        "finished_at": t.datetime_complete.timestamp() if t.datetime_complete else None,
    }


def study_summary(study: Any, cfg: StudyConfig, trials: bool = True) -> dict[str, Any]:
    """Return the API's view of a study: settings, counts, best trial and (optionally) trials."""
    all_trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in all_trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    complete = [t for t in all_trials if t.state.name == "COMPLETE"]
    best = None
    if complete:
        pick = min if cfg.direction == "minimize" else max
        b = pick(complete, key=lambda t: t.value)
        best = {"number": b.number, "value": b.value, "params": dict(b.params)}
        best["run_id"] = b.user_attrs.get(RUN_ATTR)
    job = dict(cfg.job)
    out: dict[str, Any] = {
        "name": cfg.name,
        "project": cfg.project,
        "user": cfg.user,
        "state": study_state(study),
        "metric": cfg.metric,
        "direction": cfg.direction,
        "sampler": cfg.sampler,
        "pruner": cfg.pruner,
        "n_trials": cfg.n_trials,
        "parallel": cfg.parallel,
        "experiment": cfg.experiment,
        "parent_run_id": study.user_attrs.get(PARENT_ATTR),
        "space": cfg.space.to_dict(),
        "command": job.get("command"),
        "created_at": cfg.created_at,
        "counts": counts,
        "best": best,
    }
    if trials:
        out["trials"] = [trial_json(t) for t in all_trials]
    return out
