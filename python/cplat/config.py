"""Scheduler profile files (TOML): placement, queue, queue sort, quotas, checkpoints.

Example::

    [placement]                 # where tasks go
    scorers = { bestfit = 1 }   # scorer = weight; see cplat._core.scorer_names()
    gpu_pick = "best"           # best | worst | random | fgd
    tie_break = "rank"          # rank | random
    gang_solver = "cp-sat"      # greedy | cp-sat (OR-Tools): better gang placements
    gang_time_limit = 1.0       # seconds CP-SAT may spend on one gang

    [queue]                     # when jobs start
    order = "priority"          # fcfs | sjf | priority | wfp3 | unicep | f1
    backfill = "easy"           # none | easy | conservative | rlsched
    preemption = "reclaim"      # none | priority | reclaim | both
    max_backfill_jobs = 100

    [queue_sort]                # sets priorities before each cycle (with order = "priority")
    name = "fairshare"          # fairshare | drf | multifactor (cplat.policy.fairshare)
    half_life = 604800          # usage half-life in seconds (Slurm's PriorityDecayHalfLife)
    shares = { team-a = 2 }     # other keys: the plugin's options

    [checkpoint]                # seconds
    interval = 3600
    cost = 60

    [[quota]]                   # cpu in cores, memory in GiB, gpu in devices
    project = "team-a"
    cohort = "research"
    nominal = { cpu = 64, memory = 256, gpu = 8 }
    borrowing_limit = { gpu = 8 }
    lending_limit = { gpu = 4 }
    overcommit = 1.5            # the pool may promise 1.5x its nominal quota

    [[cohort]]                  # cohorts nest by path: "org/research" is under "org"
    name = "org/research"
    borrowing_limit = { gpu = 16 }  # the subtree may use 16 GPUs beyond its nominal quotas

Unknown sections, keys or plugin names are errors that list the valid ones.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cplat.errors import InputError
from cplat.policy.gang import GangSolver
from cplat.profile import POLICIES, Profile
from cplat.scheduler import Checkpointing, QueuePolicy, Quota, Quotas

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

_SECTIONS = ("placement", "queue", "queue_sort", "checkpoint", "quota", "cohort")
_PLACEMENT_KEYS = (
    "scorers",
    "gpu_pick",
    "tie_break",
    "gang_solver",
    "gang_time_limit",
    "gang_workers",
    "gang_cycle_budget",
)
_QUEUE_KEYS = (
    "order",
    "backfill",
    "preemption",
    "lock_head",
    "max_backfill_jobs",
    "backfill_interval",
    "calendar_resolution",
    "calendar_horizon",
    "random_victims",
    "topology_aware",
    "max_span",
    "grace_period",
)
_QUOTA_KEYS = ("project", "cohort", "nominal", "borrowing_limit", "lending_limit", "overcommit")
_RESOURCES = {"cpu": 1000, "memory": 1024, "gpu": 1000}  # unit -> engine units


@dataclass(frozen=True)
class SchedulerConfig:
    """Everything a profile file selects (defaults where it is silent)."""

    placement: Profile = POLICIES["bestfit"]
    queue: QueuePolicy = QueuePolicy()
    queue_sort: dict[str, Any] | None = None
    checkpoint: Checkpointing | None = None
    quotas: Quotas | None = None
    source: str = ""
    extras: dict[str, Any] = field(default_factory=dict)
    gang: GangSolver = GangSolver()


def _check_keys(table: dict[str, Any], valid: tuple[str, ...], where: str, source: str) -> None:
    for key in table:
        if key not in valid:
            raise InputError(
                f"unknown key in [{where}] (valid: {', '.join(valid)})", source=source, field=key
            )


def _vector(value: Any, name: str, source: str) -> tuple[int, int, int]:
    if not isinstance(value, dict):
        raise InputError("expected a table like { cpu = 8, gpu = 1 }", source=source, field=name)
    _check_keys(value, tuple(_RESOURCES), name, source)
    out = []
    for res, unit in _RESOURCES.items():
        v = value.get(res, 0)
        if not isinstance(v, int | float) or v < 0:
            raise InputError(f"{res} must be a non-negative number", source=source, field=name)
        out.append(int(round(v * unit)))
    return (out[0], out[1], out[2])


def load_scheduler_config(path: str | Path) -> SchedulerConfig:
    """Read and validate a profile file.

    Raises
    ------
    InputError
        For unreadable TOML, unknown sections or keys, invalid plugin names or values.
    """
    path = Path(path)
    source = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("file not found", source=source) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read file ({exc})", source=source) from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"invalid TOML ({exc})", source=source) from None
    _check_keys(data, _SECTIONS, "profile", source)
    placement = POLICIES["bestfit"]
    gang = GangSolver()
    if "placement" in data:
        p = data["placement"]
        _check_keys(p, _PLACEMENT_KEYS, "placement", source)
        scorers = p.get("scorers", {"bestfit": 1})
        if not isinstance(scorers, dict) or not scorers:
            raise InputError("expected { scorer = weight, ... }", source=source, field="scorers")
        try:
            placement = Profile(
                name=path.stem,
                label=path.stem,
                scorers=tuple((str(k), int(v)) for k, v in scorers.items()),
                gpu_pick=str(p.get("gpu_pick", "best")),
                tie_break=str(p.get("tie_break", "rank")),
            )
        except InputError as exc:
            raise InputError(exc.message, source=source, field=exc.field) from None
        try:
            gang = GangSolver(
                solver=p.get("gang_solver", "greedy"),
                time_limit=p.get("gang_time_limit", 1.0),
                workers=p.get("gang_workers", 1),
                cycle_budget=p.get("gang_cycle_budget", 5.0),
            )
        except InputError as exc:
            raise InputError(exc.message, source=source, field=exc.field) from None
    queue = QueuePolicy()
    if "queue" in data:
        q = data["queue"]
        _check_keys(q, _QUEUE_KEYS, "queue", source)
        try:
            queue = QueuePolicy(**q)
        except InputError as exc:
            raise InputError(exc.message, source=source, field=exc.field) from None
        except TypeError as exc:
            raise InputError(f"bad value ({exc})", source=source, field="queue") from None
    queue_sort = data.get("queue_sort")
    if queue_sort is not None and (not isinstance(queue_sort, dict) or "name" not in queue_sort):
        raise InputError("[queue_sort] needs a name", source=source, field="queue_sort")
    checkpoint = None
    if "checkpoint" in data:
        c = data["checkpoint"]
        _check_keys(c, ("interval", "cost"), "checkpoint", source)
        try:
            checkpoint = Checkpointing(int(c.get("interval", 0)), int(c.get("cost", 0)))
        except InputError as exc:
            raise InputError(exc.message, source=source, field="checkpoint") from None
    quotas = None
    if "quota" in data:
        items = []
        for entry in data["quota"]:
            _check_keys(entry, _QUOTA_KEYS, "quota", source)
            if "project" not in entry or "nominal" not in entry:
                raise InputError(
                    "a [[quota]] needs project and nominal", source=source, field="quota"
                )
            lending = entry.get("lending_limit")
            items.append(
                Quota(
                    project=str(entry["project"]),
                    nominal=_vector(entry["nominal"], "nominal", source),
                    borrowing_limit=_vector(
                        entry.get("borrowing_limit", {}), "borrowing_limit", source
                    ),
                    lending_limit=None
                    if lending is None
                    else _vector(lending, "lending_limit", source),
                    cohort=str(entry.get("cohort", "")),
                    overcommit=float(entry.get("overcommit", 1.0)),
                )
            )
        limits: dict[str, tuple[int, int, int]] = {}
        for entry in data.get("cohort", []):
            _check_keys(entry, ("name", "borrowing_limit"), "cohort", source)
            if "name" not in entry:
                raise InputError("a [[cohort]] needs a name", source=source, field="cohort")
            limits[str(entry["name"])] = _vector(
                entry.get("borrowing_limit", {}), "borrowing_limit", source
            )
        try:
            quotas = Quotas(items, limits)
        except InputError as exc:
            raise InputError(exc.message, source=source, field=exc.field) from None
    return SchedulerConfig(placement, queue, queue_sort, checkpoint, quotas, source, gang=gang)
