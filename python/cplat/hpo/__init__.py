"""What a trial's training script imports: its parameters and its reports (see docs/hpo.md).

:func:`params` reads the trial's parameters, :func:`report` logs the study's metric at a step
(the service decides pruning from it). The studies themselves live in :mod:`cplat.ml.hpo`;
this package pulls in neither Optuna nor the tracking store.
"""

from __future__ import annotations

from cplat.hpo.report import ReportError, params, report

__all__ = ["ReportError", "params", "report"]
