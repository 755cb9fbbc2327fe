"""Samplers and pruners by name, all Optuna's own (cplat writes none by hand).

=================  ==========================================================================
``grid``           :class:`optuna.samplers.GridSampler` over :meth:`Space.grid`
``random``         :class:`optuna.samplers.RandomSampler`
``tpe``            :class:`optuna.samplers.TPESampler` (multivariate, Bayesian by density ratio)
``gp``             :class:`optuna.samplers.GPSampler` (Gaussian process; needs ``torch``)
``cmaes``          :class:`optuna.samplers.CmaEsSampler` (continuous spaces; needs ``cmaes``)
=================  ==========================================================================

Pruners: ``median`` (:class:`~optuna.pruners.MedianPruner`), ``successive-halving``
(:class:`~optuna.pruners.SuccessiveHalvingPruner`), ``hyperband``
(:class:`~optuna.pruners.HyperbandPruner`), ``none`` (:class:`~optuna.pruners.NopPruner`).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from cplat.errors import InputError
from cplat.ml.hpo.space import Space

__all__ = ["PRUNERS", "SAMPLERS", "make_pruner", "make_sampler"]

SAMPLERS = ("grid", "random", "tpe", "gp", "cmaes")
PRUNERS = ("median", "successive-halving", "hyperband", "none")
#: What each sampler needs beyond Optuna, and the package that brings it.
_NEEDS = {"gp": ("torch", "torch"), "cmaes": ("cmaes", "cmaes")}


def make_sampler(name: str, space: Space, seed: int | None = None, field: str = "sampler") -> Any:
    """Return the Optuna sampler called ``name`` for ``space``.

    Parameters
    ----------
    name
        One of :data:`SAMPLERS`.
    space
        The study's space (the grid sampler enumerates it; CMA-ES refuses categoricals).
    seed
        Seed of the sampler's random numbers (None: fresh).
    field
        The field named in errors.

    Raises
    ------
    InputError
        For an unknown name, a sampler whose package is missing, a space it cannot search.
    """
    import optuna

    if name not in SAMPLERS:
        raise InputError(f"unknown sampler {name!r} (valid: {', '.join(SAMPLERS)})", field=field)
    if name in _NEEDS:
        module, package = _NEEDS[name]
        if importlib.util.find_spec(module) is None:
            raise InputError(
                f"the {name} sampler needs the {package} package on the server "
                f"(pip install {package})",
                field=field,
            )
    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if any(p.kind == "categorical" for p in space.params):
        raise InputError(
            "the cmaes sampler searches numeric parameters only; use tpe or gp for "
            "categorical ones",
            field=field,
        )
    return optuna.samplers.CmaEsSampler(seed=seed)


def make_pruner(name: str, field: str = "pruner") -> Any:
    """Return the Optuna pruner called ``name`` (one of :data:`PRUNERS`).

    Raises
    ------
    InputError
        For an unknown name.
    """
    import optuna

    if name == "median":
        # A few finished trials before judging, and a few steps of each: the first
        # reports of a training run are noise.
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1)
    if name == "successive-halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise InputError(f"unknown pruner {name!r} (valid: {', '.join(PRUNERS)})", field=field)
