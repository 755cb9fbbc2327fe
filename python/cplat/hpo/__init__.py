"""Hyperparameter search whose trials are cplat jobs (see docs/hpo.md).

- :mod:`cplat.hpo.space` -- the search space file;
- :mod:`cplat.hpo.samplers` -- Optuna's samplers and pruners by name;
- :mod:`cplat.hpo.study` -- a study's definition and its journal (durable through restarts);
- :mod:`cplat.hpo.driver` -- the driver: asks Optuna, submits jobs, reads metrics, prunes;
- :mod:`cplat.hpo.runner` -- every study of a service, and the loop that drives them;
- :mod:`cplat.hpo.report` -- for training scripts: :func:`params` and :func:`report`.

Only the last is imported here, so that a training script's ``from cplat.hpo import report``
pulls in neither Optuna nor the tracking store.
"""

from __future__ import annotations

from cplat.hpo.report import ReportError, params, report

__all__ = ["ReportError", "params", "report"]
