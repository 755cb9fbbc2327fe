"""The search space of a study: a TOML file (or the same tables as JSON in ``POST /v1/studies``).

.. code-block:: toml

    append_args = true          # also pass each parameter as ``--name value`` (default false)

    [params.lr]
    type = "float"
    low = 1e-4
    high = 1e-1
    log = true

    [params.layers]
    type = "int"
    low = 1
    high = 8

    [params.optimizer]
    type = "categorical"
    choices = ["sgd", "adam"]

Every mistake is an :class:`~cplat.errors.InputError` naming the file and the field
(``params.lr.low``); unknown keys are mistakes too, so a misspelt ``hihg`` never silently
falls back to a default. The space becomes Optuna distributions (:meth:`Space.distributions`),
and for the grid sampler a finite grid (:meth:`Space.grid`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cplat.errors import InputError
from cplat.settings import read_toml

__all__ = ["MAX_GRID", "MAX_PARAMS", "Param", "Space", "load_space", "parse_space"]

#: Most parameters a space may have, and most points of a grid.
MAX_PARAMS = 64
MAX_GRID = 100_000
#: Parameter names: they become MLflow param keys and command-line options, so no spaces,
#: quotes or leading dashes.
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_TOP_KEYS = frozenset({"params", "append_args"})
_KEYS: dict[str, frozenset[str]] = {
    "float": frozenset({"type", "low", "high", "log", "step"}),
    "int": frozenset({"type", "low", "high", "log", "step"}),
    "categorical": frozenset({"type", "choices"}),
}
Kind = Literal["float", "int", "categorical"]
Choice = str | int | float | bool


@dataclass(frozen=True)
class Param:
    """One parameter of a space."""

    name: str
    kind: Kind
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    choices: tuple[Choice, ...] = ()

    def distribution(self) -> Any:
        """Return the Optuna distribution of this parameter."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.kind == "float":
            return FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            step = 1 if self.step is None else int(self.step)
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=step)
        return CategoricalDistribution(self.choices)

    def grid(self, source: str | None) -> list[Choice]:
        """Return the values a grid search tries: every choice, every int step, float steps.

        Raises
        ------
        InputError
            For a float without ``step`` (a continuous range has no grid).
        """
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "float" and self.step is None:
            raise InputError(
                "the grid sampler needs a step for a float parameter (or make it categorical)",
                source=source,
                field=f"params.{self.name}.step",
            )
        step = 1.0 if self.step is None else self.step
        n = self.grid_size()
        if self.kind == "int":
            return [int(self.low) + i * int(step) for i in range(n)]
        # Rounded as Optuna rounds a stepped float, so grid points equal sampled values.
        return [float(round(self.low + i * step, 12)) for i in range(n)]

    def grid_size(self) -> int:
        """Return how many values :meth:`grid` has (without making them; a float's needs a step)."""
        if self.kind == "categorical":
            return len(self.choices)
        step = 1.0 if self.step is None else self.step
        points = (self.high - self.low) / step + 1e-9
        # A range like -1e308 to 1e308 overflows: as many points as no grid may have.
        return int(math.floor(points)) + 1 if math.isfinite(points) else MAX_GRID + 1

    def to_dict(self) -> dict[str, Any]:
        """Return the space-file table of this parameter."""
        if self.kind == "categorical":
            return {"type": "categorical", "choices": list(self.choices)}
        out: dict[str, Any] = {"type": self.kind, "low": self.low, "high": self.high}
        if self.kind == "int":
            out["low"], out["high"] = int(self.low), int(self.high)
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = int(self.step) if self.kind == "int" else self.step
        return out


@dataclass(frozen=True)
class Space:
    """A parsed search space.

    Attributes
    ----------
    params
        The parameters, in file order.
    append_args
        Whether trials also get their parameters as ``--name value`` arguments.
    """

    params: tuple[Param, ...]
    append_args: bool = False

    def distributions(self) -> dict[str, Any]:
        """Return ``{name: optuna distribution}``."""
        return {p.name: p.distribution() for p in self.params}

    def grid(self, source: str | None = None) -> dict[str, list[Choice]]:
        """Return the grid sampler's search space.

        Raises
        ------
        InputError
            For a continuous float, or a grid of more than :data:`MAX_GRID` points.
        """
        for p in self.params:
            if p.kind == "float" and p.step is None:
                p.grid(source)  # raises, naming the parameter's step
        size = math.prod(p.grid_size() for p in self.params)
        if size > MAX_GRID:
            raise InputError(
                f"the grid has {size:,} points, more than {MAX_GRID:,}; use larger steps",
                source=source,
                field="params",
            )
        return {p.name: p.grid(source) for p in self.params}

    def to_dict(self) -> dict[str, Any]:
        """Return the space as the tables of its file (and of the API's ``space``)."""
        return {
            "append_args": self.append_args,
            "params": {p.name: p.to_dict() for p in self.params},
        }

    def args(self, values: Mapping[str, Any]) -> list[str]:
        """Return ``--name value`` arguments of a trial's parameter ``values`` (file order)."""
        out: list[str] = []
        for p in self.params:
            if p.name in values:
                out += [f"--{p.name}", format_value(values[p.name])]
        return out


def format_value(value: Any) -> str:
    """Return a parameter value as a command-line argument (``true``/``false`` for booleans)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def load_space(path: str | Path) -> Space:
    """Read and check a space file.

    Raises
    ------
    InputError
        Naming the file and the field.
    """
    return parse_space(read_toml(path), source=str(path))


def _number(value: Any, field: str, source: str | None, integer: bool) -> float:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not math.isfinite(value):
        raise InputError(
            f"expected {'an integer' if integer else 'a finite number'}, got {value!r}",
            source=source,
            field=field,
        )
    return float(value)


def _param(name: str, table: Any, source: str | None, prefix: str) -> Param:
    where = f"{prefix}params.{name}"
    if not _NAME.match(name):
        raise InputError(
            "a parameter name is a letter or _ then letters, digits, _ . - (at most 64)",
            source=source,
            field=where,
        )
    if not isinstance(table, Mapping):
        raise InputError(
            "expected a table with type = float, int or categorical", source=source, field=where
        )
    kind = table.get("type")
    if kind not in _KEYS:
        raise InputError(
            f"expected type float, int or categorical, got {kind!r}",
            source=source,
            field=f"{where}.type",
        )
    for key in table:
        if key not in _KEYS[kind]:
            raise InputError(
                f"unknown key for a {kind} parameter (valid: {', '.join(sorted(_KEYS[kind]))})",
                source=source,
                field=f"{where}.{key}",
            )
    if kind == "categorical":
        return Param(name, "categorical", choices=_choices(table, where, source))
    integer = kind == "int"
    for key in ("low", "high"):
        if key not in table:
            raise InputError(
                f"a {kind} parameter needs {key}", source=source, field=f"{where}.{key}"
            )
    low = _number(table["low"], f"{where}.low", source, integer)
    high = _number(table["high"], f"{where}.high", source, integer)
    if not low < high:
        raise InputError(
            f"high must be greater than low ({low:g})", source=source, field=f"{where}.high"
        )
    log = table.get("log", False)
    if not isinstance(log, bool):
        raise InputError("expected true or false", source=source, field=f"{where}.log")
    if log and low <= 0:
        raise InputError("a log-scaled range needs low > 0", source=source, field=f"{where}.low")
    step: float | None = None
    if "step" in table:
        step = _number(table["step"], f"{where}.step", source, integer)
        if step <= 0 or step > high - low:
            raise InputError(
                f"step must be positive and at most high - low ({high - low:g})",
                source=source,
                field=f"{where}.step",
            )
        if log and not (integer and step == 1):
            raise InputError(
                "a log-scaled range cannot have a step", source=source, field=f"{where}.step"
            )
    return Param(name, kind, low=low, high=high, log=log, step=step)


def _choices(table: Mapping[str, Any], where: str, source: str | None) -> tuple[Choice, ...]:
    choices = table.get("choices")
    field = f"{where}.choices"
    if not isinstance(choices, Sequence) or isinstance(choices, str) or not choices:
        raise InputError("expected a non-empty list of choices", source=source, field=field)
    if len(choices) > 1000:
        raise InputError("at most 1000 choices", source=source, field=field)
    seen: list[Choice] = []
    for i, c in enumerate(choices):
        if isinstance(c, float) and not math.isfinite(c):
            raise InputError(f"choice {i} is not finite", source=source, field=field)
        if not isinstance(c, (str, int, float, bool)):
            raise InputError(
                f"choice {i} must be a string, number or boolean, got {type(c).__name__}",
                source=source,
                field=field,
            )
        if isinstance(c, str) and len(c) > 256:
            raise InputError(
                f"choice {i} is longer than 256 characters", source=source, field=field
            )
        # 1 == 1.0 == True in Python: they would be one choice to Optuna, so refuse the repeat.
        if any(type(c) is type(s) and c == s for s in seen):
            raise InputError(f"choice {c!r} is repeated", source=source, field=field)
        seen.append(c)
    return tuple(seen)


def parse_space(data: Any, source: str | None = None, prefix: str = "") -> Space:
    """Check the tables of a space file (or the ``space`` of an API body).

    Parameters
    ----------
    data
        The decoded TOML (or JSON).
    source
        The file it came from, for error messages.
    prefix
        Put before every field name (``space.`` for an API body).

    Raises
    ------
    InputError
        Naming ``source`` and the field.
    """
    if not isinstance(data, Mapping):
        raise InputError("expected a table", source=source, field=prefix.rstrip(".") or "space")
    for key in data:
        if key not in _TOP_KEYS:
            raise InputError(
                f"unknown key (valid: {', '.join(sorted(_TOP_KEYS))})",
                source=source,
                field=f"{prefix}{key}",
            )
    append = data.get("append_args", False)
    if not isinstance(append, bool):
        raise InputError("expected true or false", source=source, field=f"{prefix}append_args")
    params = data.get("params")
    if not isinstance(params, Mapping) or not params:
        raise InputError(
            "expected at least one [params.NAME] table", source=source, field=f"{prefix}params"
        )
    if len(params) > MAX_PARAMS:
        raise InputError(f"at most {MAX_PARAMS} parameters", source=source, field=f"{prefix}params")
    return Space(
        tuple(_param(str(name), table, source, prefix) for name, table in params.items()),
        append_args=append,
    )
