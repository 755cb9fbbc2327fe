"""A job's submitted spec, typed: what the API accepted and the store keeps as a dict."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from cplat.errors import InputError

__all__ = ["DEFAULT_MAX_RUNTIME", "JobSpec", "OnFailure", "TaskResources"]

#: Run time limit of a job that names none (seconds).
DEFAULT_MAX_RUNTIME = 86400


class OnFailure(str, Enum):
    """What a failed task does to its job: ``fail`` it, or ``restart`` it (up to a limit)."""

    FAIL = "fail"
    RESTART = "restart"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class TaskResources:
    """What each task of a job asks for (milli-CPU, MiB, GPUs, a GPU share in milli-GPU)."""

    cpu_milli: int = 1000
    memory_mib: int = 1024
    num_gpu: int = 0
    gpu_milli: int = 1000
    #: GPU model families the tasks accept (any of them); empty: any model.
    gpu_models: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Return the stored form."""
        return {
            "cpu_milli": self.cpu_milli,
            "memory_mib": self.memory_mib,
            "num_gpu": self.num_gpu,
            "gpu_milli": self.gpu_milli,
            "gpu_models": list(self.gpu_models),
        }


@dataclass(frozen=True)
class JobSpec:
    """A job as submitted: its tasks, limits and failure policy.

    ``checkpoint`` and ``command`` keep the shapes the API accepts (a policy table or null; a
    shell string or an argument list), since the agents and the API read them as given.
    """

    command: str | tuple[str, ...]
    count: int = 1
    resources: TaskResources = field(default_factory=TaskResources)
    priority: int = 0
    gang: bool = True
    max_runtime: int = DEFAULT_MAX_RUNTIME
    checkpoint: Mapping[str, int] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str | None = None
    on_failure: OnFailure = OnFailure.FAIL
    max_restarts: int = 0
    #: Run alone on its nodes.
    exclusive: bool = False
    #: Fewest tasks an elastic job runs with (None: exactly ``count``).
    min_count: int | None = None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> JobSpec:
        """Fill the defaults of a submission (already checked against its schema).

        Checks what a schema cannot express.

        Raises
        ------
        InputError
            Naming the field (``tasks.resources.gpu_milli``, ``gang``, ...).
        """
        tasks = body.get("tasks", {})
        res = tasks.get("resources", {})
        resources = TaskResources(
            cpu_milli=int(res.get("cpu_milli", 1000)),
            memory_mib=int(res.get("memory_mib", 1024)),
            num_gpu=int(res.get("num_gpu", 0)),
            gpu_milli=int(res.get("gpu_milli", 1000)),
            gpu_models=tuple(sorted(set(res.get("gpu_models", [])))),
        )
        if resources.gpu_milli < 1000 and resources.num_gpu != 1:
            raise InputError(
                "a GPU share (gpu_milli < 1000) needs num_gpu = 1",
                field="tasks.resources.gpu_milli",
            )
        if resources.gpu_models and resources.num_gpu == 0:
            raise InputError("gpu_models needs num_gpu > 0", field="tasks.resources.gpu_models")
        count = int(tasks.get("count", 1))
        gang = bool(body.get("gang", True))
        if not gang and count > 1:
            raise InputError(
                "tasks of one job are placed all or nothing; submit separate jobs instead",
                field="gang",
            )
        min_count = tasks.get("min_count")
        if min_count is not None and int(min_count) > count:
            raise InputError(
                f"tasks.min_count ({min_count}) must not exceed tasks.count ({count})",
                field="tasks.min_count",
            )
        command = body["command"]
        return cls(
            command=command if isinstance(command, str) else tuple(command),
            count=count,
            resources=resources,
            priority=int(body.get("priority", 0)),
            gang=gang,
            max_runtime=int(body.get("max_runtime", DEFAULT_MAX_RUNTIME)),
            checkpoint=body.get("checkpoint"),
            env=dict(body.get("env", {})),
            workdir=body.get("workdir"),
            on_failure=OnFailure(body.get("on_failure", "fail")),
            max_restarts=int(body.get("max_restarts", 0)),
            exclusive=bool(body.get("exclusive", False)),
            min_count=None if min_count is None else int(min_count),
        )

    @classmethod
    def from_stored(cls, spec: Mapping[str, Any]) -> JobSpec:
        """Read a spec the store holds (written by :meth:`to_dict`)."""
        tasks = spec["tasks"]
        res = tasks["resources"]
        command = spec["command"]
        return cls(
            command=command if isinstance(command, str) else tuple(command),
            count=int(tasks["count"]),
            resources=TaskResources(
                cpu_milli=int(res["cpu_milli"]),
                memory_mib=int(res["memory_mib"]),
                num_gpu=int(res["num_gpu"]),
                gpu_milli=int(res["gpu_milli"]),
                gpu_models=tuple(str(m) for m in res.get("gpu_models", ())),
            ),
            priority=int(spec.get("priority", 0)),
            gang=bool(spec.get("gang", True)),
            max_runtime=int(spec.get("max_runtime", DEFAULT_MAX_RUNTIME)),
            checkpoint=spec.get("checkpoint"),
            env=dict(spec.get("env", {})),
            workdir=spec.get("workdir"),
            on_failure=OnFailure(spec.get("on_failure", "fail")),
            max_restarts=int(spec.get("max_restarts", 0)),
            exclusive=bool(spec.get("exclusive", False)),
            min_count=None if tasks.get("min_count") is None else int(tasks["min_count"]),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the form the store keeps and the API shows (keys in the stored order).

        ``exclusive`` and ``tasks.min_count`` appear only when set, so a job that uses
        neither is stored (and its idempotency fingerprint taken) as before they existed.
        """
        tasks: dict[str, Any] = {"count": self.count, "resources": self.resources.to_dict()}
        if self.min_count is not None:
            tasks["min_count"] = self.min_count
        out: dict[str, Any] = {
            "tasks": tasks,
            "priority": self.priority,
            "gang": self.gang,
            "max_runtime": self.max_runtime,
            "checkpoint": None if self.checkpoint is None else dict(self.checkpoint),
            "command": self.command if isinstance(self.command, str) else list(self.command),
            "env": dict(self.env),
            "workdir": self.workdir,
            "on_failure": self.on_failure.value,
            "max_restarts": self.max_restarts,
        }
        if self.exclusive:
            out["exclusive"] = True
        return out

    @property
    def fewest_tasks(self) -> int:
        """The fewest tasks the job can start with."""
        return self.count if self.min_count is None else self.min_count

    @property
    def restarts_on_failure(self) -> bool:
        """Whether a failed task restarts the job (while restarts are left)."""
        return self.on_failure is OnFailure.RESTART
