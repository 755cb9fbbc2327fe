"""The ML lifecycle on the scheduler's core: domain logic free of HTTP (docs/architecture.md).

- :mod:`cplat.ml.tracking` -- experiments, runs, metrics, artifacts, and the model registry
  (registered models, versions, aliases) that the service's MLflow-compatible API serves;
- :mod:`cplat.ml.hpo` -- hyperparameter studies on Optuna's samplers and pruners, whose trials
  are cplat jobs.

What a user's training script imports lives outside this package, light on dependencies:
:mod:`cplat.hpo` (``params`` and ``report`` for a trial).
"""
